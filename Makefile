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
	$(BIN)/ruff check services cli tests bench
	$(BIN)/mypy services cli

clean:
	rm -rf $(VENV) var test-output .pytest_cache

# --- deployment: docker compose (Linux, NVIDIA with COMPOSE_PROFILES=gpu) and launchd (macOS) ---
COMPOSE_FILE := deploy/compose/docker-compose.yml
# The repository's .env when there is one; otherwise compose reads deploy/compose/.env by itself.
COMPOSE_ENV := $(if $(wildcard .env),--env-file .env,)

.PHONY: compose-up compose-down launchd-install launchd-uninstall

compose-up:  ## build and start Redis, MinIO, images-service, worker(s), gateway (127.0.0.1:8080)
	docker compose -f $(COMPOSE_FILE) $(COMPOSE_ENV) up -d --build

compose-down:  ## stop and remove the containers; volumes (queue, images, models) are kept
	docker compose -f $(COMPOSE_FILE) $(COMPOSE_ENV) down

launchd-install:  ## macOS: images-service, worker, gateway as user agents (WITH_REDIS=1 WITH_MINIO=1 to add those)
	@# Off macOS, let install.sh refuse (and say why) before the venv is built for nothing.
	@test "$$(uname -s)" = Darwin || test "$${DRY_RUN:-0}" = 1 || deploy/launchd/install.sh
	$(MAKE) install
	VENV="$(abspath $(VENV))" deploy/launchd/install.sh

launchd-uninstall:  ## macOS: stop and remove the user agents (data and logs are kept)
	deploy/launchd/uninstall.sh

# --- performance: every claim measured side by side in one run (bench/README.md) ---
bench: install  ## latest at any size, queue overhead, submission latency, batches: a table + bench/results/*.json
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.run
