# The two commands a fresh clone needs:  `make sweep report`  and  `make test`.
# Every target creates .venv and installs the pinned dependencies on first use.

PYTHON_BOOT ?= python3.11
VENV        := .venv
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.installed
EXP         ?= quick
RESULTS     ?= results
# `make sweep EXP=<preset>` runs conf/experiment/<preset>.yaml or, when there is no such file,
# every conf/experiment/<preset>_*.yaml in turn (EXP=seed_claims: one preset per claim).
PRESETS      = $(or $(basename $(notdir $(wildcard conf/experiment/$(EXP).yaml))),\
                    $(sort $(basename $(notdir $(wildcard conf/experiment/$(EXP)_*.yaml)))))
# Seeds per job of `make sweep` (default: the preset's), e.g. SEEDS=3 for a trial run.
SEEDS       ?=
# Hydra launcher of `make sweep`: joblib (parallel local processes), submitit_local, or slurm
# (conf/hydra/launcher/slurm.yaml; PARTITION=<name> picks the partition).
LAUNCHER    ?= joblib
# Parallel jobs of the joblib launcher (one torch thread per job).
JOBS        ?= $(shell nproc 2>/dev/null || echo 2)
PARTITION   ?=
# Packing (bench/packing.py): grid points that differ only in batchable values (seed, lr,
# reduction, coefficients) train as the slots of one process, at most MAX_SLOTS slots each
# (default: 256 on CPU, 4096 on CUDA). PACK=0 runs one process per grid point instead.
PACK        ?= 1
MAX_SLOTS   ?=
# Parallel pytest workers of `make test` (pytest-xdist, whole test files per worker); 0 runs
# the tests in one process.
TEST_WORKERS ?= $(JOBS)
# Extra Hydra overrides for `make sweep`, e.g. ARGS="total_steps=5000 env=cartpole".
ARGS        ?=
SWEEP_ARGS   = $(strip results_dir=$(RESULTS) hydra/launcher=$(LAUNCHER) \
               $(if $(filter joblib,$(LAUNCHER)),hydra.launcher.n_jobs=$(JOBS)) \
               $(if $(and $(filter slurm,$(LAUNCHER)),$(PARTITION)),hydra.launcher.partition=$(PARTITION)) \
               $(if $(filter 0,$(PACK)),hydra/sweeper=basic) \
               $(if $(MAX_SLOTS),hydra.sweeper.max_slots=$(MAX_SLOTS)) \
               $(if $(SEEDS),seeds=$(SEEDS)) $(ARGS))

.PHONY: setup test test-slow sweep report bench lint clean findings verify

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install --quiet --constraint constraints.txt --editable '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow -n $(TEST_WORKERS) --dist loadfile

# Every preset runs even if one has failed jobs; the exit status is non-zero if any had.
sweep: $(STAMP)
	@test -n "$(PRESETS)" || { echo "make sweep: unknown EXP=$(EXP); valid choices:" \
		"$(sort $(basename $(notdir $(wildcard conf/experiment/*.yaml)))) seed_claims" >&2; exit 2; }
	@status=0; for preset in $(PRESETS); do \
		echo "$(PY) -m bench.run --multirun +experiment=$$preset" $(SWEEP_ARGS); \
		$(PY) -m bench.run --multirun +experiment=$$preset $(SWEEP_ARGS) || status=1; \
	done; exit $$status

# Results names of EXP's presets (their `name:`; seed_claims_002_* share one), else EXP.
REPORT_NAMES = $(or $(sort $(foreach preset,$(PRESETS),$(shell sed -n 's/^name: *//p' conf/experiment/$(preset).yaml))),$(EXP))

report: $(STAMP)
	@for name in $(REPORT_NAMES); do $(PY) -m analysis.report $(RESULTS)/$$name || exit 1; done

bench: $(STAMP)
	$(PY) -m bench.throughput --results-dir $(RESULTS)

lint: $(STAMP)
	$(VENV)/bin/ruff check bench analysis tests

# Removes the environment and caches only; results/ is data and is never deleted here.
clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# README's "What we found", regenerated from the committed evidence in findings/.
findings: $(STAMP)
	$(PY) -m analysis.findings --write README.md

# Re-runs a slice of the committed seed_claims_003 evidence (80 slots, about 2.5 minutes on
# one core) and checks every seed against findings/ bit for bit (analysis/verify.py); on another
# CPU type, in distribution and by the claims' verdicts on the slice instead.
VERIFY_SLICE ?= env=cartpole optim=sgd optim.lr=1e-4,1e-2 reduction=sum,mean
verify: $(STAMP)
	$(PY) -m analysis.verify findings/seed_claims_003 --experiment seed_claims_003 $(VERIFY_SLICE)
