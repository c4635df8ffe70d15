# teeserve: the two commands a newcomer runs are `make demo` and `make test`.
# Both create .venv on first use and install everything pinned in pyproject.toml.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test bench venv clean help

help:
	@echo "make demo   - the whole confidential-serving flow on this machine (simulated TEE)"
	@echo "make test   - the full test suite (slow end-to-end runs included)"
	@echo "make bench  - the benchmarks in benchmarks/ (prints ratios measured side by side)"

venv: $(STAMP)

$(STAMP): pyproject.toml scripts/bootstrap.sh
	PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/bootstrap.sh
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/teeserve demo --out demo-out

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) demo-out bench-out .pytest_cache
