# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
# Each creates .venv if missing, installs torch (CPU 2.13.0 unless TORCH=... says otherwise),
# installs scaleflow with its dev extras, then runs.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: install demo test bench clean

install:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[dev]"

demo: install
	$(BIN)/scaleflow train run_dir=runs/demo/train trainer.flops=2e11

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: install
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf runs .pytest_cache
