# The two commands a fresh clone needs:  `make sweep report`  and  `make test`.
# Every target creates .venv and installs the pinned dependencies on first use.

PYTHON_BOOT ?= python3.11
VENV        := .venv
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.installed
EXP         ?= quick
RESULTS     ?= results
# Parallel jobs of `make sweep` (Hydra's joblib launcher; one torch thread per job).
JOBS        ?= $(shell nproc 2>/dev/null || echo 2)
# Extra Hydra overrides for `make sweep`, e.g. ARGS="seeds=2 total_steps=5000".
ARGS        ?=

.PHONY: setup test test-slow sweep report bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install --quiet --constraint constraints.txt --editable '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

sweep: $(STAMP)
	$(PY) -m bench.run --multirun +experiment=$(EXP) results_dir=$(RESULTS) \
		hydra/launcher=joblib hydra.launcher.n_jobs=$(JOBS) $(ARGS)

report: $(STAMP)
	$(PY) -m analysis.report $(RESULTS)/$(EXP)

bench: $(STAMP)
	$(PY) -m bench.throughput --results-dir $(RESULTS)

lint: $(STAMP)
	$(VENV)/bin/ruff check bench analysis tests

# Removes the environment and caches only; results/ is data and is never deleted here.
clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
