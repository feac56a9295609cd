# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
# Each creates .venv if missing, installs torch (CPU 2.13.0 unless TORCH=... says otherwise),
# installs scaleflow with its dev extras, then runs.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
# Two pytest workers (the 2-core target machine); the SLURM tests share one of them.
PYTEST_ARGS ?= -n 2 --dist loadgroup

.PHONY: install demo test bench clean

install:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[dev]"

# The main job: the isoflop_cpu study (24 runs, a few minutes on 2 cores), then its fit.
demo: install
	$(BIN)/scaleflow sweep isoflop isoflop_cpu
	$(BIN)/scaleflow fit runs/isoflop_cpu --out runs/isoflop_cpu/fit --predict 1e12,1e13 --bootstrap 200
	@echo "report: runs/isoflop_cpu/fit/report.md and report.html"

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: install
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf runs .pytest_cache
