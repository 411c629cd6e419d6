"""The test rig: one real PostgreSQL per test session, a fresh database, a clean state.

The server is found in this order, and the first that answers is used:
  (a) ``PGNOTIFY_TEST_DSN``;
  (b) a server on 127.0.0.1:5432;
  (c) testcontainers' PostgreSQL, when a Docker engine answers;
  (d) a throw-away cluster from the local ``initdb``/``pg_ctl``.
If none works the session fails, saying what was tried; it never skips.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgnotify.devcluster import LocalCluster, answers
from pgnotify.migrate import migrate

# The SMTP and Twilio-shaped peers, shared by every suite that sends.
pytest_plugins = ["tests.peers.fixtures"]

_DATA_TABLES = (
    "pgnotify.inbox, pgnotify.notifications, pgnotify.opt_outs, booking.payments, "
    "booking.bookings, booking.customers, booking.services, booking.staff, booking.shops"
)


def _docker_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


@dataclass
class PgServer:
    admin_dsn: str
    how: str


def _find_server(stack: contextlib.ExitStack) -> PgServer:
    tried: list[str] = []
    env = os.environ.get("PGNOTIFY_TEST_DSN")
    if env:
        if answers(env):
            return PgServer(env, "PGNOTIFY_TEST_DSN")
        tried.append("PGNOTIFY_TEST_DSN (did not answer)")
    else:
        tried.append("PGNOTIFY_TEST_DSN (unset)")
    for user in dict.fromkeys([os.environ.get("PGUSER") or "", getpass.getuser(), "postgres"]):
        if not user:
            continue
        dsn = f"postgresql://{user}@127.0.0.1:5432/postgres"
        if answers(dsn):
            return PgServer(dsn, f"local server 127.0.0.1:5432 as {user}")
    tried.append("127.0.0.1:5432 (no answer)")
    if _docker_answers():
        try:
            from testcontainers.postgres import PostgresContainer

            container = stack.enter_context(PostgresContainer("postgres:16-alpine", driver=None))
            return PgServer(container.get_connection_url(), "testcontainers")
        except Exception as exc:
            tried.append(f"testcontainers ({exc})")
    else:
        tried.append("testcontainers (no Docker engine)")
    try:
        cluster = LocalCluster().init()
        cluster.start()
        stack.callback(cluster.destroy)
        return PgServer(cluster.dsn, f"throw-away cluster on port {cluster.port}")
    except Exception as exc:
        tried.append(f"local initdb/pg_ctl ({exc})")
    pytest.fail("no PostgreSQL for the tests; tried: " + "; ".join(tried), pytrace=False)


def with_dbname(dsn: str, dbname: str) -> str:
    params = conninfo_to_dict(dsn)
    params["dbname"] = dbname
    return make_conninfo("", **params)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    with contextlib.ExitStack() as stack:
        yield _find_server(stack)


@pytest.fixture(scope="session")
def database_url(pg_server: PgServer) -> Iterator[str]:
    """A freshly created and migrated database, dropped at the end of the session."""
    name = f"pgnotify_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(pg_server.admin_dsn, autocommit=True) as admin:
        admin.execute(f'create database "{name}"')
    dsn = with_dbname(pg_server.admin_dsn, name)
    migrate(dsn)
    try:
        yield dsn
    finally:
        with psycopg.connect(pg_server.admin_dsn, autocommit=True) as admin:
            admin.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture(scope="session")
def _rules_snapshot(database_url: str) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(database_url) as conn:
        return {
            t: conn.execute(f"select * from {t}").fetchall()
            for t in ("pgnotify.routes", "pgnotify.reminder_rules")
        }


def reset_database(dsn: str, snapshot: dict[str, list[tuple[Any, ...]]]) -> None:
    """Empty every data table and restore the default routing and reminder rules."""
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        conn.execute(f"truncate {_DATA_TABLES}, pgnotify.routes, pgnotify.reminder_rules")
        for table, rows in snapshot.items():
            if rows:
                placeholders = ", ".join(["%s"] * len(rows[0]))
                with conn.cursor() as cur:
                    cur.executemany(f"insert into {table} values ({placeholders})", rows)


@pytest.fixture
def clean_db(database_url: str, _rules_snapshot: dict[str, list[tuple[Any, ...]]]) -> str:
    """The session database, emptied before the test: tests run in any order."""
    reset_database(database_url, _rules_snapshot)
    return database_url


@pytest.fixture
def db(clean_db: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit psycopg connection to a clean database (UTC session time zone)."""
    with psycopg.connect(clean_db, autocommit=True) as conn:
        conn.execute("set timezone = 'UTC'")
        yield conn
