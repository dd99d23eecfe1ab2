# KITTY Images — one command per task. `make run`, `make demo`, `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= worker,embedded,dev

.PHONY: install run demo test test-fast lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Re-install when pyproject.toml changes. torch is pinned (torch==2.13.0) in the `worker` extra.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed

run: install  ## Redis (private unless REDIS_URL), images-service :8089, a worker, gateway :8080
	$(BIN)/kitty-images up

demo: install  ## bring the stack up, generate, list, select, download and verify an imageRef
	$(BIN)/kitty-images demo

test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -ra

test-fast: install  ## everything but the end-to-end and browser tests
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not e2e and not browser"

lint: install
	$(BIN)/ruff check services cli tests
	$(BIN)/mypy services cli

clean:
	rm -rf $(VENV) var test-output .pytest_cache
