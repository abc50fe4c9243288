# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup demo test test-full lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/trialsync demo

test: setup lint
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check pipeline warehouse flows bench tests
	$(BIN)/mypy

# `make bench N=600000`: the comparison of bench/run.py at N studies (results in bench/RESULTS.md).
N ?= 20000
bench: setup
	$(BIN)/python -m bench.run --size $(N) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache demo-output
