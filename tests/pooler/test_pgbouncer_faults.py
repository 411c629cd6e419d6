"""Faults behind a real PgBouncer in transaction mode: a burst, kill -9 in the middle of
one, and the server sessions behind PgBouncer terminated under load. The daemon's pool
goes through PgBouncer (``DATABASE_PGBOUNCER=true``), its LISTEN connection direct.
"""

from __future__ import annotations

import signal
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.daemon.harness import (
    BATCH,
    WORKERS,
    burst_env,
    count,
    count_reaches,
    health_becomes,
    logged,
    message_id_counts,
    queue_burst,
    quiet_booking,
    spawn,
    stop_process,
    wait_until,
)
from tests.devcluster import free_port
from tests.faults.test_database_faults import terminate_a_record_in_flight
from tests.peers.smtp import SmtpPeer
from tests.pgbouncer import PgBouncer

pytestmark = pytest.mark.faults

Conn = psycopg.Connection[Any]

BURST = 400


def pooled_burst_env(
    bouncer: PgBouncer, dsn: str, tmp_path: Path, smtp: SmtpPeer, **more: Any
) -> dict[str, str]:
    """``burst_env`` with the pool through PgBouncer and LISTEN direct."""
    env = burst_env(dsn, tmp_path, smtp, **more)
    env.update(DATABASE_URL=bouncer.url(dsn), DATABASE_PGBOUNCER="true", LISTEN_DATABASE_URL=dsn)
    return env


def server_sessions(db: Conn) -> set[int]:
    """Backends of this database the pool opened through PgBouncer (it passes the name on)."""
    rows = db.execute(
        "select pid from pg_stat_activity where datname = current_database()"
        " and application_name = 'pgnotify'"
    ).fetchall()
    return {r[0] for r in rows}


def listener_session(db: Conn) -> set[int]:
    rows = db.execute(
        "select pid from pg_stat_activity where datname = current_database()"
        " and application_name = 'pgnotify-listener'"
    ).fetchall()
    return {r[0] for r in rows}


async def sent_at_least(dsn: str, rows: int) -> bool:
    return await count(dsn, "status = 'sent'") >= rows


async def test_a_burst_behind_pgbouncer_is_sent_once_each(
    db: Conn, clean_db: str, tmp_path: Path, pgbouncer: PgBouncer, smtp_server: SmtpPeer
) -> None:
    """400 emails and 400 in-app messages through PgBouncer: all sent, each exactly once."""
    ids = queue_burst(db, quiet_booking(db, phone=None), BURST // 2, ("email", "inapp"))
    proc = spawn(pooled_burst_env(pgbouncer, clean_db, tmp_path, smtp_server), tmp_path / "d.log")
    try:
        await count_reaches(clean_db, len(ids), "status = 'sent'", timeout=60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        stop_process(proc)
    received = message_id_counts(smtp_server.messages)
    assert len(received) == BURST // 2
    assert set(received.values()) == {1}
    assert db.execute(
        "select count(*), count(distinct notification_id) from pgnotify.inbox"
    ).fetchone() == (BURST // 2, BURST // 2)


async def test_kill_9_behind_pgbouncer_mid_burst_loses_nothing(
    db: Conn, clean_db: str, tmp_path: Path, pgbouncer: PgBouncer, smtp_server: SmtpPeer
) -> None:
    """A daemon killed mid-batch: PgBouncer holds none of its transactions open, so its
    leases expire and the next daemon sends the rest; only rows it held can go twice."""
    ids = queue_burst(db, quiet_booking(db, phone=None, with_user=False), BURST)
    smtp_server.stall_next(0.01, count=BURST)  # so the kill lands while batches are in flight
    env = pooled_burst_env(pgbouncer, clean_db, tmp_path, smtp_server)
    first = spawn(env, tmp_path / "first.log")
    try:
        await wait_until(lambda: len(smtp_server.messages) >= BURST // 4, timeout=30)
        first.send_signal(signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL
    finally:
        stop_process(first)
    left_claimed = await count(clean_db, "status = 'sending'")
    assert 0 < left_claimed <= WORKERS * BATCH, "the kill did not land mid-batch"

    second = spawn(env, tmp_path / "second.log")
    try:
        # The dead daemon's rows come back when its 3 s lease expires.
        await count_reaches(clean_db, BURST, "status = 'sent'", timeout=45)
        second.send_signal(signal.SIGTERM)
        assert second.wait(15) == 0
    finally:
        stop_process(second)
    received = message_id_counts(smtp_server.messages)
    message_ids = {
        r[0]
        for r in db.execute(
            "select provider_id from pgnotify.notifications where id = any(%s)", (ids,)
        )
    }
    assert set(received) == message_ids and len(message_ids) == BURST
    assert sum(n - 1 for n in received.values()) <= WORKERS * BATCH


async def test_terminating_the_server_sessions_behind_pgbouncer_loses_nothing(
    db: Conn, clean_db: str, tmp_path: Path, pgbouncer: PgBouncer, smtp_server: SmtpPeer
) -> None:
    """The server sessions PgBouncer holds for the daemon are terminated during a burst
    (once while recording outcomes, then four times at random): the daemon goes on through
    new ones, sends every email once, keeps its listener, and stays healthy."""
    booking = quiet_booking(db, phone=None)
    health = free_port()
    env = pooled_burst_env(
        pgbouncer,
        clean_db,
        tmp_path,
        smtp_server,
        NOTIFICATION_HEALTH_ADDR=f"127.0.0.1:{health}",
        NOTIFICATION_POLL_INTERVAL=60,
    )
    log = tmp_path / "daemon.log"
    smtp_server.stall_next(0.005, count=2000)  # so the burst lasts through the terminations
    proc = spawn(env, log)
    try:
        await health_becomes(health, 200, timeout=20)
        listener = listener_session(db)
        ids = queue_burst(db, booking, BURST, ("email", "inapp"))
        # First a termination aimed at a record in flight (chance alone may never hit one)...
        await terminate_a_record_in_flight(db, clean_db)
        # ...then four at whatever the server sessions behind PgBouncer are doing.
        for _ in range(4):
            # Some progress between terminations: each one lands on batches in flight.
            target = await count(clean_db, "status = 'sent'") + 40
            await wait_until(partial(sent_at_least, clean_db, target), timeout=30)
            sessions = await wait_until(lambda: server_sessions(db), timeout=10)
            db.execute(
                "select pg_terminate_backend(pid) from unnest(%s::int[]) pid", (list(sessions),)
            )
        assert await count(clean_db, "status = 'sent'") < len(ids), "the burst ended too soon"
        await count_reaches(clean_db, len(ids), "status = 'sent'", timeout=60)
        await health_becomes(health, 200)
        assert listener_session(db) == listener, "the listener (direct) was lost too"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        stop_process(proc)
    assert not logged(log, "listener_lost")
    # The record cut above failed and was retried through PgBouncer, on another session.
    assert logged(log, "record_failed"), "no record failed: the termination missed"
    received = message_id_counts(smtp_server.messages)
    assert len(received) == BURST
    assert set(received.values()) == {1}
    assert db.execute(
        "select count(*), count(distinct notification_id) from pgnotify.inbox"
    ).fetchone() == (BURST, BURST)
