# mlplatform: `make run` sets everything up and runs the whole pipeline; `make test` runs the tests.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Private by default: every command started from here runs with telemetry and analytics off.
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export DVC_NO_ANALYTICS := 1
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION := false
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: help setup system-deps run test test-fast lint ui server bench clean

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  \033[36m%-10s\033[0m %s\n",$$1,$$2}'

$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c "import sys; assert sys.version_info[:2] == (3, 11), sys.version" || { echo "error: Python 3.11 is required; set PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c requirements.lock -e ".[dev]"
	$(BIN)/python -c 'import mlplatform.privacy as p; print("privacy settings:", p.install())'
	@touch $(STAMP)

setup: $(STAMP) ## Create .venv with the pinned dependencies and the package

run: setup ## Set up, then run the whole pipeline (dvc repro) on the default dataset
	$(BIN)/dvc repro
	@$(BIN)/mlplatform next-steps

# The tests open the HTML reports in a real browser: Debian's chromium (apt, as root or sudo).
system-deps: ## Install the system packages the tests need (chromium)
	@command -v chromium >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  echo "installing Debian's chromium for the browser tests"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

test: setup system-deps ## Set up, then run the whole test suite (what .ci/run calls)
	$(BIN)/python -m pytest -n 2 --dist loadfile

test-fast: setup ## Only the fast unit tests
	$(BIN)/python -m pytest -m "not e2e and not slow"

lint: setup ## ruff lint and format check
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

ui: setup ## Open the MLflow UI on the local store (http://127.0.0.1:5000)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

server: setup ## Start the team's MLflow tracking server (PostgreSQL; README "Team mode"; ARGS="--auth ...")
	$(BIN)/mlplatform server $(ARGS)

bench: setup ## Run the benchmarks under bench/
	$(BIN)/python bench/tracking_overhead.py
	$(BIN)/python bench/scoring.py

clean: ## Remove local stores and pipeline outputs (keeps .venv)
	rm -rf mlflow.db mlruns mlartifacts .mlplatform data/raw data/prepared models reports
