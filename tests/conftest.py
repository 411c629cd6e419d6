"""The test rig: one real PostgreSQL per test session, a fresh database, a clean state.

The server is found in this order, and the first that answers is used:
  (a) ``PGNOTIFY_TEST_DSN``;
  (b) a server on 127.0.0.1:5432;
  (c) testcontainers' PostgreSQL, when a Docker engine answers;
  (d) a throw-away cluster from the local ``initdb``/``pg_ctl``.
If none works the session fails, saying what was tried; it never skips.

Hypothesis runs under the profile named by ``HYPOTHESIS_PROFILE``: ``dev`` (the default:
hypothesis' own settings, new random examples each run, failures replayed from
``.hypothesis/``) or ``ci`` (what ``make test`` selects unless told otherwise: the same
examples on every run, no deadline, no example database, and a reproduction blob printed
with any failure).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import settings

from tests.devcluster import NoServer, find_server, fresh_database, with_dbname
from tests.devcluster import Server as PgServer

# The SMTP and Twilio-shaped peers, shared by every suite that sends; a real PgBouncer.
pytest_plugins = ["tests.peers.fixtures", "tests.pgbouncer"]

# Loaded here, before any test module is imported: a test's own @settings(...) takes its
# unspecified values from the profile active when it is decorated. Explicit values such as
# max_examples=40 stay as written under either profile.
settings.register_profile("dev")
settings.register_profile(
    "ci",
    derandomize=True,  # examples derived from each test's source: a red CI run reproduces
    max_examples=100,
    deadline=None,  # a loaded CI machine must not turn slowness into failures
    database=None,  # a clean clone: nothing replayed from, or written to, .hypothesis/
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

_DATA_TABLES = (
    "pgnotify.inbox, pgnotify.notifications, pgnotify.opt_outs, pgnotify.inbound_messages, "
    "booking.payments, "
    "booking.bookings, booking.customers, booking.services, booking.staff, booking.shops"
)


# Tests import these two from here; they live in tests.devcluster.
__all__ = ["PgServer", "with_dbname"]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The session's PostgreSQL, found as the module docstring says (``find_server``)."""
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(find_server(dsn_env="PGNOTIFY_TEST_DSN"))
        except NoServer as exc:
            pytest.fail(f"no PostgreSQL for the tests: {exc}", pytrace=False)
        yield server


@pytest.fixture(scope="session")
def database_url(pg_server: PgServer) -> Iterator[str]:
    """A freshly created and migrated database, dropped at the end of the session."""
    with fresh_database(pg_server.admin_dsn, prefix="pgnotify_test") as dsn:
        yield dsn


@pytest.fixture(scope="session")
def _rules_snapshot(database_url: str) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(database_url) as conn:
        return {
            t: conn.execute(f"select * from {t}").fetchall()
            for t in ("pgnotify.routes", "pgnotify.reminder_rules", "pgnotify.quiet_hours")
        }


# Quiet hours are off in tests unless one asks for them (the `quiet_hours` fixture): the
# default 21:00-08:00 would make every test that checks a reminder's due time depend on
# the hour at which it runs.
_OFF_UNLESS_ASKED = ("pgnotify.quiet_hours",)


def reset_database(
    dsn: str, snapshot: dict[str, list[tuple[Any, ...]]], *, quiet_hours: bool = False
) -> None:
    """Empty every data table and restore the default routing and reminder rules (and the
    default quiet hours if ``quiet_hours``, else none)."""
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        conn.execute(
            f"truncate {_DATA_TABLES}, pgnotify.routes, pgnotify.reminder_rules,"
            " pgnotify.quiet_hours"
        )
        for table, rows in snapshot.items():
            if rows and (quiet_hours or table not in _OFF_UNLESS_ASKED):
                placeholders = ", ".join(["%s"] * len(rows[0]))
                with conn.cursor() as cur:
                    cur.executemany(f"insert into {table} values ({placeholders})", rows)


@pytest.fixture
def clean_db(database_url: str, _rules_snapshot: dict[str, list[tuple[Any, ...]]]) -> str:
    """The session database, emptied before the test: tests run in any order."""
    reset_database(database_url, _rules_snapshot)
    return database_url


@pytest.fixture
def quiet_hours(
    clean_db: str, _rules_snapshot: dict[str, list[tuple[Any, ...]]]
) -> list[tuple[Any, ...]]:
    """The clean database with the quiet hours `pgnotify migrate` installs; their rows."""
    reset_database(clean_db, _rules_snapshot, quiet_hours=True)
    return _rules_snapshot["pgnotify.quiet_hours"]


@pytest.fixture
def db(clean_db: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit psycopg connection to a clean database (UTC session time zone)."""
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute("set timezone = 'UTC'")
        yield conn
