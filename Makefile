# One entry point for developers and CI. `make run` and `make test` set everything up.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LISTEN ?= 127.0.0.1:50051
DATA   ?= data
# Unit and integration tests in parallel; e2e (subprocess servers, signals) after them, then
# chaos (fault injection against a subprocess server; timing-sensitive, so alone, ~1 min).
PYTEST_WORKERS ?= 2
LINT_PATHS := $(wildcard src tests scripts bench)

.PHONY: install run proto openapi lint typecheck test test-deps test-fast bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	BIN=$(BIN) DATA=$(DATA) LISTEN=$(LISTEN) scripts/dev-run.sh

proto: install
	$(BIN)/python scripts/gen_proto.py

openapi: install
	$(BIN)/python scripts/gen_openapi.py

lint: install
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy

# The PostgreSQL and Redis servers the tests start: installed when missing (root on Debian),
# or a stop at once with the command to run.
test-deps:
	scripts/test-deps.sh

test: test-deps lint typecheck
	$(BIN)/pytest -n $(PYTEST_WORKERS) tests/unit tests/integration
	$(BIN)/pytest tests/e2e
	$(BIN)/pytest tests/chaos

test-fast: install test-deps
	$(BIN)/pytest -n $(PYTEST_WORKERS) tests/unit tests/integration

bench: install
	@command -v h2load >/dev/null || apt-get install -y nghttp2-client \
		|| { echo "bench: h2load missing; install Debian's nghttp2-client"; exit 1; }
	@command -v valgrind >/dev/null || apt-get install -y valgrind \
		|| echo "bench: valgrind missing; the instructions part will be skipped"
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
