# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup demo test test-full test-reliability lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/trialsync demo

test: setup lint
	$(BIN)/pytest -q

# The whole reliability suite (every kill point, fault case and misuse case); `make test` runs a short
# version. Subprocess syncs reuse the test session's Prefect server.
test-reliability: setup
	TRIALSYNC_FULL=1 $(BIN)/pytest -q -m reliability

lint: setup
	$(BIN)/ruff check pipeline warehouse flows tests tools
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache demo-output
