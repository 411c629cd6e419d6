# pgnotify — `make help` lists what one can do.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "pgnotify needs Python >= 3.11 (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install pgnotify with its test and dev tools

test: $(STAMP) ## run the whole test suite against a real Postgres (what CI runs)
	$(BIN)/pytest -q

lint: $(STAMP) ## ruff (lint + format check) and mypy --strict
	$(BIN)/ruff check pgnotify tests
	$(BIN)/ruff format --check pgnotify tests
	$(BIN)/mypy --strict pgnotify

format: $(STAMP) ## apply ruff's formatting and safe fixes
	$(BIN)/ruff check --fix pgnotify tests
	$(BIN)/ruff format pgnotify tests

migrate: $(STAMP) ## apply sql/ to DATABASE_URL
	$(BIN)/pgnotify migrate

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

.PHONY: help install test lint format migrate clean
