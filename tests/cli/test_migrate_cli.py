"""`pgnotify migrate` as an operator runs it: a subprocess against a fresh, empty database."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pgnotify.migrate import discover
from tests.conftest import PgServer, with_dbname
from tests.factories import make_booking, make_world


@pytest.fixture
def empty_db(pg_server: PgServer) -> Iterator[str]:
    """A database of its own, created empty and dropped afterwards."""
    name = f"pgnotify_migcli_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server.admin_dsn, autocommit=True) as admin:
        admin.execute(f'create database "{name}"')
    try:
        yield with_dbname(pg_server.admin_dsn, name)
    finally:
        with psycopg.connect(pg_server.admin_dsn, autocommit=True) as admin:
            admin.execute(f'drop database if exists "{name}" with (force)')


def migrate_cli(database_url: str, cwd: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    """`pgnotify migrate` with only DATABASE_URL (and ``settings``) set, no .env."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NOTIFICATION_", "SMTP_", "TWILIO_", "DATABASE_URL", "PG"))
    }
    return subprocess.run(
        [sys.executable, "-m", "pgnotify.cli", "migrate"],
        env={**env, **settings, "DATABASE_URL": database_url},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The single line a failed command prints: exit 2, no traceback, nothing on stdout."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert proc.stdout == ""
    return lines[0]


def test_migrate_builds_the_schema_in_an_empty_database(empty_db: str, tmp_path: Path) -> None:
    """Exit 0, one `applied` line per file in order, and the schema is there and recorded."""
    proc = migrate_cli(empty_db, tmp_path)

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"applied {m.name}" for m in discover()]
    with psycopg.connect(empty_db) as conn:
        recorded = conn.execute(
            "select version, name, checksum from pgnotify.schema_migrations order by version"
        ).fetchall()
        assert recorded == [(m.version, m.name, m.checksum) for m in discover()]
        for relation in ("pgnotify.notifications", "pgnotify.inbox", "booking.bookings"):
            found = conn.execute("select to_regclass(%s)::text", (relation,)).fetchone()
            assert found == (relation,)
        # The functions and triggers are live: a confirmed booking queues its confirmation.
        booking = make_booking(conn, make_world(conn))
        queued = conn.execute(
            "select channel from pgnotify.notifications"
            " where booking_id = %s and kind = 'booking_confirmed' order by channel",
            (booking,),
        ).fetchall()
        assert queued == [("email",), ("inapp",), ("sms",)]


def test_a_second_migrate_is_a_no_op_and_says_so(empty_db: str, tmp_path: Path) -> None:
    assert migrate_cli(empty_db, tmp_path).returncode == 0
    with psycopg.connect(empty_db) as conn:
        before = conn.execute("select * from pgnotify.schema_migrations order by 1").fetchall()

    proc = migrate_cli(empty_db, tmp_path)

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "database is up to date\n"
    assert proc.stderr == ""
    with psycopg.connect(empty_db) as conn:
        after = conn.execute("select * from pgnotify.schema_migrations order by 1").fetchall()
    assert after == before


def test_a_checksum_mismatch_exits_2_with_one_line_naming_the_file(
    empty_db: str, tmp_path: Path
) -> None:
    """A landed migration whose recorded checksum no longer matches its file is refused:
    exit 2 and one line naming the file, instead of a silent "up to date"."""
    assert migrate_cli(empty_db, tmp_path).returncode == 0
    edited = discover()[-1]
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute(
            "update pgnotify.schema_migrations set checksum = repeat('0', 64) where version = %s",
            (edited.version,),
        )

    line = one_line_error(migrate_cli(empty_db, tmp_path))

    assert line.startswith("pgnotify: ")
    assert edited.name in line
    assert "changed after it was applied" in line


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "postgresql://nobody:s3cret-pw@db.nonexistent.invalid:5432/app",
            "cannot connect to nobody@db.nonexistent.invalid:5432/app",
        ),
        (
            "postgresql://nobody:s3cret-pw@127.0.0.1:1/app",
            "cannot connect to nobody@127.0.0.1:1/app",
        ),
    ],
    ids=["host-does-not-resolve", "nothing-listens"],
)
def test_an_unreachable_database_exits_2_with_one_line(
    tmp_path: Path, url: str, expected: str
) -> None:
    """One line naming where it tried, never the password."""
    line = one_line_error(migrate_cli(url, tmp_path))

    assert line.startswith(f"pgnotify: {expected}")
    assert "s3cret-pw" not in line


def test_migrate_refuses_to_run_through_pgbouncer(empty_db: str, tmp_path: Path) -> None:
    """Its session advisory lock would not survive transaction pooling: exit 2, no change."""
    proc = migrate_cli(empty_db, tmp_path, DATABASE_PGBOUNCER="true")
    assert proc.returncode == 2
    assert "DATABASE_PGBOUNCER" in proc.stderr and "direct" in proc.stderr
    assert "Traceback" not in proc.stderr
    with psycopg.connect(empty_db) as conn:
        assert conn.execute("select to_regclass('pgnotify.notifications')").fetchone() == (None,)
