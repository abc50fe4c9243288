# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup browser rsync demo test test-reliability lint bench clean

$(STAMP): pyproject.toml constraints.txt setup.py pipeline/_canonical.c
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/trialsync demo

# Two workers (one per core), each taking whole test files (module fixtures stay in one process), the
# longest files first (tests/conftest.py orders them; xdist would order them by their number of tests).
TEST_WORKERS ?= 2
test: setup browser rsync lint
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# The whole reliability suite (every kill point, fault case and misuse case); `make test` runs a short
# version. Subprocess syncs reuse the test session's Prefect server.
test-reliability: setup
	TRIALSYNC_FULL=1 $(BIN)/pytest -q -m reliability

# The report's browser test opens the report in Debian's chromium: installed here when it is missing
# and apt-get can run (as root); elsewhere that one test is skipped with a message saying why.
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "installing chromium for the report's browser test (apt-get)"; \
	  apt-get update -qq && apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends chromium \
	    >/dev/null || echo "could not install chromium: the report's browser test will be skipped"; \
	else echo "chromium is missing and cannot be installed here (needs apt-get as root):" \
	  "the report's browser test will be skipped"; fi

# The warehouse-portability test copies a warehouse with rsync too: installed here when it is missing
# and apt-get can run (as root); elsewhere that one case is skipped with a message saying why.
rsync:
	@if command -v rsync >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "installing rsync for the warehouse-portability test (apt-get)"; \
	  apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends rsync >/dev/null 2>&1 || \
	  { apt-get update -qq && apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends rsync \
	    >/dev/null; } || echo "could not install rsync: that portability case will be skipped"; \
	else echo "rsync is missing and cannot be installed here: that portability case will be skipped"; fi

lint: setup
	$(BIN)/ruff check pipeline warehouse flows bench tests tools
	$(BIN)/mypy

# `make bench N=600000`: the comparison of bench/run.py at N studies (results in bench/RESULTS.md).
N ?= 20000
bench: setup
	$(BIN)/python -m bench.run --size $(N) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache demo-output test-artifacts
