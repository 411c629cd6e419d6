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

run: $(STAMP) ## set up, find or start a Postgres, migrate, run the daemon (outbox unless configured)
	@url=$$($(BIN)/python -m pgnotify.devcluster) && \
	DATABASE_URL="$$url" $(BIN)/pgnotify migrate && \
	echo "pgnotify: starting the daemon (Ctrl-C stops it); try 'make demo' in another shell" && \
	DATABASE_URL="$$url" exec $(BIN)/pgnotify run

demo: $(STAMP) ## insert a demo booking 25 s ahead (--fast) into the database make run uses
	@url=$$($(BIN)/python -m pgnotify.devcluster) && \
	DATABASE_URL="$$url" $(BIN)/pgnotify migrate >/dev/null && \
	DATABASE_URL="$$url" $(BIN)/pgnotify demo --fast

migrate: $(STAMP) ## apply sql/ to DATABASE_URL
	$(BIN)/pgnotify migrate

bench: $(STAMP) ## measure trigger overhead, drain rate, latency and memory (not part of test)
	$(BIN)/python -m benchmarks.bench

soak: $(STAMP) ## 10 minutes of traffic with random faults; prints sent/failed/duplicates/lost/RSS
	$(BIN)/python -m benchmarks.soak --minutes $${SOAK_MINUTES:-10}

install-systemd: ## install the unit and an example env file (as root; see README)
	install -d -m 0755 /etc/pgnotify /etc/pgnotify/credentials
	install -m 0644 systemd/pgnotify.service /etc/systemd/system/pgnotify.service
	test -e /etc/pgnotify/pgnotify.env || \
		install -m 0640 systemd/pgnotify.env.example /etc/pgnotify/pgnotify.env
	systemctl daemon-reload
	@echo "edit /etc/pgnotify/pgnotify.env, put secrets in /etc/pgnotify/credentials/, then:"
	@echo "  systemctl enable --now pgnotify"

clean: ## remove the virtualenv and caches (not .pgdata/, the local cluster)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

.PHONY: help install test lint format run demo migrate bench soak install-systemd clean
