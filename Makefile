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

# $(call debian-package,PROGRAM,WHY,TARGET): Debian's package of that name, installed when
# PROGRAM is missing if we are root; anyone else is told what to install.
debian-package = command -v $(1) >/dev/null || test -x /usr/sbin/$(1) || \
	if [ "$$(id -u)" = 0 ]; then \
		echo "installing $(1) ($(2))"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(1); \
	else \
		echo "make $(3) needs $(1): run 'sudo apt-get install $(1)', or make $(3) as root"; \
		exit 1; \
	fi

# The suite runs a real PgBouncer (tests/pgbouncer.py).
test-tools:
	@$(call debian-package,pgbouncer,the tests run a real one,test)

# Hypothesis' deterministic profile unless told otherwise (HYPOTHESIS_PROFILE=dev for new
# random examples): the suite CI runs is the suite a developer runs.
test: $(STAMP) test-tools ## run the whole test suite against a real Postgres (what CI runs)
	HYPOTHESIS_PROFILE=$${HYPOTHESIS_PROFILE:-ci} $(BIN)/pytest -q -rfEs

lint: $(STAMP) ## ruff (lint + format check) and mypy --strict, benchmarks included
	$(BIN)/ruff check pgnotify tests benchmarks
	$(BIN)/ruff format --check pgnotify tests benchmarks
	$(BIN)/mypy --strict pgnotify benchmarks

format: $(STAMP) ## apply ruff's formatting and safe fixes
	$(BIN)/ruff check --fix pgnotify tests benchmarks
	$(BIN)/ruff format pgnotify tests benchmarks

run: $(STAMP) ## set up, find or start a Postgres, migrate, run the daemon (outbox unless configured)
	@url=$$($(BIN)/python -m tests.devcluster) && \
	DATABASE_URL="$$url" $(BIN)/pgnotify migrate && \
	echo "pgnotify: starting the daemon (Ctrl-C stops it); try 'make demo' in another shell" && \
	DATABASE_URL="$$url" exec $(BIN)/pgnotify run

demo: $(STAMP) ## insert a demo booking 25 s ahead (--fast) into the database make run uses
	@url=$$($(BIN)/python -m tests.devcluster) && \
	DATABASE_URL="$$url" $(BIN)/pgnotify migrate >/dev/null && \
	DATABASE_URL="$$url" $(BIN)/pgnotify demo --fast

migrate: $(STAMP) ## apply sql/ to DATABASE_URL
	$(BIN)/pgnotify migrate

bench: $(STAMP) ## measure triggers, drain rates (1-3 daemons), NOTIFY on/off, latency, memory; PGNOTIFY_BENCH_QUICK=1: a quick check
	$(BIN)/python -m benchmarks.bench

# Debian's Chromium for headless screenshots (make test does not need it).
screenshots: $(STAMP) ## photograph every email kind, en and es, at 390 and 900 px (build/screenshots)
	@$(call debian-package,chromium,headless screenshots,screenshots)
	$(BIN)/python -m benchmarks.screenshots

soak: $(STAMP) ## 10 minutes of traffic with random faults; prints sent/failed/duplicates/lost/RSS
	$(BIN)/python -m benchmarks.soak --minutes $${SOAK_MINUTES:-10}

# Production (README.md, "Production install"), as root on the target host: the wheel with
# its runtime dependencies only, in a venv of its own, and the systemd unit. To try it
# without systemd, DESTDIR puts every file under another root and SYSTEMCTL=true skips
# systemctl: `make install-systemd DESTDIR=/tmp/root SYSTEMCTL=true` (a venv cannot move:
# a staged one runs only from where it was staged).
PREFIX ?= /opt/pgnotify
DESTDIR ?=
SYSTEMCTL ?= systemctl
APP_VENV = $(DESTDIR)$(PREFIX)/venv
APP_ETC = $(DESTDIR)/etc/pgnotify
APP_UNIT = $(DESTDIR)/etc/systemd/system/pgnotify.service

# umask 022 on every line that creates files: the service runs as a dynamic user, who must
# be able to read the venv whatever root's umask is. The wheel is built from a copy of the
# files it is made of, so a stale build/ of this checkout can never slip into it and the
# checkout gets no root-owned build output; the second install replaces pgnotify even when
# its version number did not change.
install-systemd: ## as root: the wheel (no dev tools) in /opt/pgnotify/venv, the unit, /etc/pgnotify
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "pgnotify needs Python >= 3.11 (set PYTHON=...)"; exit 1; }
	@test -n "$(DESTDIR)" || test "$$(id -u)" = 0 || \
		{ echo "install-systemd writes to $(PREFIX) and /etc: run it as root"; exit 1; }
	umask 022 && { test -x $(APP_VENV)/bin/python || $(PYTHON) -m venv $(APP_VENV); }
	umask 022 && build=$$(mktemp -d) && trap 'rm -rf "$$build"' EXIT && \
		cp -R pyproject.toml README.md pgnotify sql templates "$$build" && \
		$(APP_VENV)/bin/python -m pip wheel --quiet --no-deps --wheel-dir "$$build/dist" "$$build" && \
		$(APP_VENV)/bin/python -m pip install --quiet "$$build"/dist/pgnotify-*.whl && \
		$(APP_VENV)/bin/python -m pip install --quiet --force-reinstall --no-deps "$$build"/dist/pgnotify-*.whl
	install -m 0644 README.md $(DESTDIR)$(PREFIX)/README.md
	install -d -m 0755 $(APP_ETC) $(dir $(APP_UNIT))
	install -d -m 0700 $(APP_ETC)/credentials
	sed 's|/opt/pgnotify/|$(PREFIX)/|g' systemd/pgnotify.service | install -m 0644 /dev/stdin $(APP_UNIT)
	test -e $(APP_ETC)/pgnotify.env || install -m 0640 systemd/pgnotify.env.example $(APP_ETC)/pgnotify.env
	$(SYSTEMCTL) daemon-reload
	@echo
	@echo "$$($(APP_VENV)/bin/pgnotify --version) is in $(PREFIX)/venv; pgnotify.service is installed."
	@echo "Next (README.md, \"Production install\"):"
	@echo "1. Create the schema as the database's owner, or a role with CREATE on it (no superuser,"
	@echo "   no extension; with CREATEROLE it also creates the NOLOGIN role pgnotify_daemon):"
	@echo "     DATABASE_URL='postgresql://owner@db.internal/booking' $(PREFIX)/venv/bin/pgnotify migrate"
	@echo "2. The daemon's login role, holding only pgnotify_daemon:"
	@echo "     psql 'postgresql://owner@db.internal/booking' \\"
	@echo "       -c \"create role pgnotify_app login password '…' in role pgnotify_daemon\""
	@echo "3. Its database URL, a credential only the service reads:"
	@echo "     install -m 0600 /dev/stdin /etc/pgnotify/credentials/DATABASE_URL \\"
	@echo "       <<< 'postgresql://pgnotify_app:…@db.internal/booking'"
	@echo "4. Providers: settings in /etc/pgnotify/pgnotify.env (none is enabled), secrets as files"
	@echo "   in /etc/pgnotify/credentials/ named in a drop-in: systemctl edit pgnotify"
	@echo "     [Service]"
	@echo "     LoadCredential=SMTP_PASSWORD:/etc/pgnotify/credentials/SMTP_PASSWORD"
	@echo "5. systemctl enable --now pgnotify; then pgnotify check and pgnotify status, given the"
	@echo "   service's settings and credentials as the README shows."

uninstall-systemd: ## as root: stop pgnotify, remove the unit and the venv (keeps /etc/pgnotify)
	$(SYSTEMCTL) disable --now pgnotify.service || true
	rm -f $(APP_UNIT)
	rm -rf $(APP_VENV)
	rm -f $(DESTDIR)$(PREFIX)/README.md
	test ! -d $(DESTDIR)$(PREFIX) || rmdir --ignore-fail-on-non-empty $(DESTDIR)$(PREFIX)
	$(SYSTEMCTL) daemon-reload
	@echo "Kept: /etc/pgnotify (settings, credentials), /etc/systemd/system/pgnotify.service.d"
	@echo "(drop-ins), /var/lib/private/pgnotify (the outbox) and the database's schemas."

clean: ## remove the virtualenv and caches (not .pgdata/, the local cluster)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

.PHONY: help install test-tools test lint format run demo migrate bench soak install-systemd uninstall-systemd clean
