# `make demo` and `make test` each create .venv and install what they need first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch 2.13.0 installs from local disk on the project's machines;
# elsewhere pip fetches it from PyPI.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench fuzz clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/detlearn demo --out demo

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

# Every benchmarks/*.py, its output recorded in benchmarks/RESULTS.md (tens of minutes);
# `make bench ONLY="klm_sample hcal_latency"` refreshes those alone.
bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py $(addprefix --only ,$(ONLY))

# The fuzz tests (ROOT reading, configs) with many more cases than `make test` runs (FUZZ=3000 by default).
FUZZ ?= 3000
fuzz: $(STAMP)
	DETLEARN_FUZZ_EXAMPLES=$(FUZZ) $(BIN)/python -m pytest -q tests/io/test_fuzz_root.py tests/test_config_fuzz.py

clean:
	rm -rf $(VENV) demo
