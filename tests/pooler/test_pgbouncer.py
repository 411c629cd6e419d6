"""The daemon and the CLI behind a real PgBouncer in transaction mode (README, "Running
several daemons"): ``DATABASE_URL`` through PgBouncer, ``DATABASE_PGBOUNCER=true``,
``LISTEN_DATABASE_URL`` direct to the server. Everything the daemon does must hold there.
"""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgnotify import queries
from pgnotify.db import create_pool
from tests.daemon.harness import (
    count_reaches,
    daemon_env,
    env_for,
    health_becomes,
    logged,
    make_settings,
    smtp_settings,
    spawn,
    stop_process,
    twilio_settings,
)
from tests.devcluster import free_port
from tests.factories import make_booking, make_world
from tests.peers.smtp import SmtpPeer
from tests.peers.twilio import TwilioPeer
from tests.pgbouncer import TEST_USERS, PgBouncer

Conn = psycopg.Connection[Any]


def pooled_env(
    bouncer: PgBouncer, dsn: str, tmp_path: Path, health_port: int | None = None, **more: Any
) -> dict[str, str]:
    """A daemon's environment as the README sets it up behind PgBouncer."""
    return env_for(
        bouncer.url(dsn),
        tmp_path / "outbox",
        DATABASE_PGBOUNCER="true",
        LISTEN_DATABASE_URL=dsn,
        NOTIFICATION_HEALTH_ADDR=f"127.0.0.1:{health_port}" if health_port else "",
        **more,
    )


def logins(bouncer: PgBouncer, dsn: str) -> int:
    """Client logins PgBouncer logged for ``dsn``'s database (log_connections is on)."""
    dbname = conninfo_to_dict(dsn)["dbname"]
    return bouncer.log.read_text(errors="replace").count(f"login attempt: db={dbname} ")


async def test_a_daemon_behind_pgbouncer_becomes_healthy_and_delivers_every_channel(
    db: Conn,
    clean_db: str,
    tmp_path: Path,
    pgbouncer: PgBouncer,
    smtp_server: SmtpPeer,
    twilio_server: TwilioPeer,
) -> None:
    """Health 200, then a booking's email, SMS and in-app message go out through PgBouncer."""
    health, log = free_port(), tmp_path / "daemon.log"
    before = logins(pgbouncer, clean_db)
    env = pooled_env(
        pgbouncer,
        clean_db,
        tmp_path,
        health,
        **smtp_settings(smtp_server),
        **twilio_settings(twilio_server),
    )
    proc = spawn(env, log)
    try:
        await health_becomes(health, 200, timeout=20)
        booking = make_booking(db, make_world(db))
        await count_reaches(
            clean_db, 3, f"booking_id = '{booking}' and status = 'sent'", timeout=20
        )
        assert len(smtp_server.messages) == 1
        assert len(twilio_server.messages) == 1
        assert db.execute("select count(*) from pgnotify.inbox").fetchone() == (1,)
        proc.terminate()
        assert proc.wait(15) == 0
    finally:
        stop_process(proc)
    assert logins(pgbouncer, clean_db) > before, "the daemon's pool did not go through PgBouncer"
    assert not logged(log, "database_unavailable")


async def test_behind_pgbouncer_the_pool_leaves_no_prepared_statement_on_the_server(
    db: Conn, clean_db: str, tmp_path: Path, pgbouncer: PgBouncer
) -> None:
    """``DATABASE_PGBOUNCER=true``: the daemon's statements, run many times, leave no named
    prepared statement on the server session (the next transaction may run on another)."""
    settings = make_settings(pgbouncer.url(clean_db), tmp_path, DATABASE_PGBOUNCER=True)
    pool = await create_pool(settings)
    try:
        async with pool.acquire() as conn, conn.transaction():  # one server session
            for _ in range(8):  # past the five runs after which Postgres may go generic
                await conn.fetch(queries.CLAIM_DUE, 10, "pooler-test", 60.0, [])
                await conn.fetchval(queries.NEXT_RUN_AT, [])
            prepared = await conn.fetch("select name, statement from pg_prepared_statements")
            behind = await conn.fetchval("select current_setting('application_name')")
    finally:
        await pool.close()
    assert prepared == []
    assert behind == "pgnotify"


LOGIN = TEST_USERS[1]  # a login role PgBouncer knows, holding only pgnotify_daemon
ZONE = "Asia/Kathmandu"  # UTC+05:45: an offset nobody's code assumes by accident


@pytest.fixture
def zoned_login_dsn(db: Conn, clean_db: str) -> str:
    """The daemon's own login role, whose sessions default to a far-away time zone."""
    db.execute(
        f"""
        do $$ begin
            if not exists (select 1 from pg_roles where rolname = '{LOGIN}') then
                create role {LOGIN} login;
            end if;
        end $$;
        """
    )
    db.execute(f"grant pgnotify_daemon to {LOGIN}")
    db.execute(f"alter role {LOGIN} set timezone = '{ZONE}'")
    params = conninfo_to_dict(clean_db)
    params["user"] = LOGIN
    return make_conninfo("", **params)  # type: ignore[arg-type]


async def test_messages_behind_pgbouncer_do_not_depend_on_the_session_time_zone(
    db: Conn,
    clean_db: str,
    zoned_login_dsn: str,
    tmp_path: Path,
    pgbouncer: PgBouncer,
    twilio_server: TwilioPeer,
) -> None:
    """Sessions in UTC+05:45 (the role's default; the daemon sets none): the SMS still
    shows the booking's time in the shop's zone (Madrid), as it does for a UTC session."""
    with psycopg.connect(pgbouncer.url(zoned_login_dsn)) as conn:
        assert conn.execute("show timezone").fetchone() == (ZONE,)
    starts_at = datetime(2031, 3, 4, 9, 30, tzinfo=UTC)  # 10:30 in Madrid (CET)
    booking = make_booking(db, make_world(db, email=None, with_user=False), starts_at=starts_at)
    env = pooled_env(pgbouncer, zoned_login_dsn, tmp_path, **twilio_settings(twilio_server))
    proc = spawn(env, tmp_path / "daemon.log")
    try:
        await count_reaches(
            clean_db, 1, f"booking_id = '{booking}' and status = 'sent'", timeout=20
        )
        proc.terminate()
        assert proc.wait(15) == 0
    finally:
        stop_process(proc)
    (sms,) = twilio_server.messages
    assert "10:30 CET" in sms.body, sms.body
    assert "Tue 4 Mar" in sms.body, sms.body


def cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pgnotify.cli", *args],
        env={**daemon_env(env)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_status_and_check_work_through_pgbouncer(
    db: Conn, clean_db: str, tmp_path: Path, pgbouncer: PgBouncer
) -> None:
    """``pgnotify status`` and ``pgnotify check`` with the daemon's settings behind PgBouncer."""
    make_booking(db, make_world(db))
    env = pooled_env(pgbouncer, clean_db, tmp_path)
    status = cli(["status"], env)
    assert status.returncode == 0, status.stderr
    assert "pending" in status.stdout
    check = cli(["check"], env)
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_readme_gives_the_pgbouncer_ini_lines_the_tests_run(pgbouncer: PgBouncer) -> None:
    """The README's ``pgbouncer.ini`` is the fixture's, but for the port and the file's path."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    (block,) = re.findall(r"```ini\n(.*?)```", readme, flags=re.S)
    tested = pgbouncer.config.read_text()
    tested = re.sub(r"listen_port = \d+", "listen_port = 6432", tested)
    tested = re.sub(r"auth_file = .*", "auth_file = userlist.txt", tested)
    assert block == tested
