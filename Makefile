# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
# Each creates .venv if missing, installs torch (CPU 2.13.0 unless TORCH=... says otherwise),
# installs scaleflow (with its dev extras for `make test`), then runs.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
# Two pytest workers (the 2-core target machine); the SLURM tests share one of them.
PYTEST_ARGS ?= -n 2 --dist loadgroup

.PHONY: install install-runtime demo test bench clean

# What running needs (the demo's): torch, then scaleflow and its dependencies.
install-runtime:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(BIN)/python -m pip install -q --disable-pip-version-check -e .

# Plus the dev extras (the suite's: pytest, hypothesis, tokenizers, datasets, trackers).
install: install-runtime
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[dev]"

# The main job: the isoflop_branches_cpu study (an IsoFLOP grid of 11 budgets bought with decay
# branches, about 3 minutes on 2 cores), then its fit. Huber delta 0.03: about 1.345 times the
# runs' scatter around the law (2.2% in log loss), Huber's 95%-efficiency constant (README).
demo: install-runtime
	$(BIN)/scaleflow decay-branches isoflop_branches_cpu
	$(BIN)/scaleflow fit runs/isoflop_branches_cpu --out runs/isoflop_branches_cpu/fit --predict 1e12,1e13 \
		--bootstrap 200 --huber-delta 0.03
	@echo "report: runs/isoflop_branches_cpu/fit/report.md and report.html"

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: install
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf runs .pytest_cache
