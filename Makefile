# revlens: two entry points on a fresh machine — `make demo` and `make test`.
# Both create .venv if missing, install torch (CPU build, from local disk) first, then revlens.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.revlens-installed
DEMO_OUT ?= demo-out
PYTEST_ARGS ?=

.PHONY: demo test bench lint assets clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m revlens.lab.demo --out $(DEMO_OUT)

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadgroup $(PYTEST_ARGS) tests

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

lint: $(STAMP)
	$(VENV)/bin/ruff check revlens tests benchmarks

# Regenerate the shipped lab checkpoints in revlens/lab/assets (see revlens/lab/assets/README.md).
assets: $(STAMP)
	$(PY) -m revlens.lab.assets

clean:
	rm -rf $(DEMO_OUT) .pytest_cache tests/artifacts
