# KITTY Images — one command per task. `make run`, `make demo`, `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= worker,embedded,mcp,dev
# Every install takes the exact versions the tests passed with: requirements.lock, resolved from
# pyproject.toml's ranges by `make lock`, is given to pip as constraints.
LOCK := requirements.lock
PIP_VERSION := 26.3

.PHONY: install lock run demo test test-fast lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "pip==$(PIP_VERSION)"

# Re-install when pyproject.toml or the lock changes. torch is pinned (torch==2.13.0) in the `worker` extra.
$(VENV)/.installed: pyproject.toml $(LOCK) | $(BIN)/python
	$(BIN)/python -m pip install -q -c $(LOCK) -e ".[$(EXTRAS)]"
	touch $@

# axe-core for the gallery's accessibility test (tests/browser/test_gallery_a11y.py), the exact version
# of its package-lock.json; re-installed when that changes. Without npm it is left out, and the test
# says so (it fails in CI, where .ci/run installs npm first).
AXE_DIR := tests/browser/axe
AXE_INSTALLED := $(AXE_DIR)/node_modules/.installed
NPM := $(shell command -v npm 2>/dev/null)

$(AXE_INSTALLED): $(AXE_DIR)/package.json $(AXE_DIR)/package-lock.json
	npm ci --prefix $(AXE_DIR) --no-audit --no-fund --loglevel=error
	touch $@

install: $(VENV)/.installed $(if $(NPM),$(AXE_INSTALLED))

# Re-resolve the lock after editing pyproject.toml: pins already in the lock are kept where the ranges
# allow. Upgrade on purpose with UPGRADE="rq redis" (those packages) or UPGRADE=all (everything),
# then `make install test` and commit the lock with the change.
UV_VERSION := 0.13.9
lock: | $(BIN)/python
	$(BIN)/python -m pip install -q "uv==$(UV_VERSION)"
	$(BIN)/uv pip compile pyproject.toml --quiet --all-extras --universal --python-version 3.11 \
		--custom-compile-command "make lock" --annotation-style line -o $(LOCK) \
		$(if $(filter all,$(UPGRADE)),--upgrade,$(foreach pkg,$(UPGRADE),--upgrade-package $(pkg)))

run: install  ## Redis (private unless REDIS_URL), images-service :8089, a worker, gateway :8080
	$(BIN)/kitty-images up

demo: install  ## bring the stack up, generate, list, select, download and verify an imageRef
	$(BIN)/kitty-images demo

test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -ra

test-fast: install  ## everything but the end-to-end, browser, real-peer and slow tests
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not e2e and not browser and not peer and not slow"

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
