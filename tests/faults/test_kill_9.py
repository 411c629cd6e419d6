"""kill -9 of a daemon mid-batch: the lease brings its rows back, and nothing is lost.

Once, then five times in a row at random points of a 2,000-notification burst. Only
rows a killed process held (claimed, outcome not yet recorded) can go out twice, so
duplicates are counted against exactly those rows.
"""

from __future__ import annotations

import asyncio
import random
import signal
from collections import Counter
from collections.abc import Awaitable, Callable
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
    message_id_counts,
    queue_burst,
    quiet_booking,
    spawn,
    stop_process,
    wait_until,
)
from tests.peers.smtp import SmtpPeer

pytestmark = pytest.mark.faults

Conn = psycopg.Connection[Any]

BURST = 400


async def test_kill_9_mid_batch_loses_nothing_and_duplicates_are_bounded(
    db: Conn, clean_db: str, tmp_path: Path, smtp_server: SmtpPeer
) -> None:
    ids = queue_burst(db, quiet_booking(db, phone=None, with_user=False), BURST)
    # Slow every SMTP transaction a little, so the kill lands while batches are in flight.
    smtp_server.stall_next(0.01, count=BURST)
    env = burst_env(clean_db, tmp_path, smtp_server)
    first = spawn(env, tmp_path / "first.log")
    try:
        await wait_until(lambda: len(smtp_server.messages) >= BURST // 4, timeout=20)
        first.send_signal(signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL
    finally:
        stop_process(first)
    left_claimed = await count(clean_db, "status = 'sending'")
    assert 0 < left_claimed <= WORKERS * BATCH, "the kill did not land mid-batch"
    assert await count(clean_db, "status = 'sent'") < BURST

    second = spawn(env, tmp_path / "second.log")
    try:
        # The dead daemon's rows come back when its 3 s lease expires.
        await count_reaches(clean_db, BURST, "status = 'sent'", timeout=30)
        second.send_signal(signal.SIGTERM)
        assert second.wait(15) == 0
    finally:
        stop_process(second)

    message_ids = {
        r[0]
        for r in db.execute(
            "select provider_id from pgnotify.notifications where id = any(%s)", (ids,)
        )
    }
    assert len(message_ids) == BURST  # one stable Message-ID per notification
    received = message_id_counts(smtp_server.messages)
    assert set(received) == message_ids  # every notification reached the server
    # Only what was handed over but not yet recorded when the process died goes twice.
    duplicates = sum(n - 1 for n in received.values())
    assert duplicates <= WORKERS * BATCH


# -- five kills in a row --------------------------------------------------------------------

KILLS = 5
PER_CHANNEL = 1_000  # email to the SMTP peer and in-app: 2,000 notifications
ROUNDS = 100
MAX_RETRIES = KILLS + 1  # a row caught by every kill is still retried, never failed


def in_flight_of(db: Conn, pid: int) -> set[int]:
    """Rows a daemon process held (claimed, outcome not recorded) when it died."""
    rows = db.execute(
        "select id from pgnotify.notifications where status = 'sending' and claimed_by like %s",
        (f"%:{pid}:%",),
    ).fetchall()
    return {r[0] for r in rows}


def sent_by(dsn: str, pid: int, rows: int) -> Callable[[], Awaitable[bool]]:
    """A predicate: the daemon process ``pid`` has recorded ``rows`` rows as sent."""

    async def reached() -> bool:
        mine = "claimed_by like %s and status = 'sent'"
        return await count(dsn, mine, (f"%:{pid}:%",)) >= rows

    return reached


def notification_id(message_id: str) -> int:
    """``<pgnotify.42@domain>`` -> 42 (see ``Composer.message_id``)."""
    return int(message_id.removeprefix("<pgnotify.").partition("@")[0])


async def test_kill_9_five_times_in_a_2000_burst_loses_nothing_and_bounds_duplicates(
    db: Conn, clean_db: str, tmp_path: Path, smtp_server: SmtpPeer
) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    print(f"kill -9 x{KILLS}: random seed {seed}")
    booking = quiet_booking(db, phone=None)
    # In rounds of 10 + 10 (each its own run_at), so every batch of 20 holds both kinds.
    ids = [
        i
        for _ in range(ROUNDS)
        for i in queue_burst(db, booking, PER_CHANNEL // ROUNDS, ("email", "inapp"))
    ]
    assert len(ids) == 2 * PER_CHANNEL
    emails = {
        r[0]
        for r in db.execute(
            "select id from pgnotify.notifications where id = any(%s) and channel = 'email'",
            (ids,),
        )
    }
    # A little SMTP latency, so every batch spends a moment in flight.
    smtp_server.stall_next(0.005, count=3 * PER_CHANNEL)
    env = burst_env(
        clean_db,
        tmp_path,
        smtp_server,
        NOTIFICATION_LEASE_SECONDS=2,
        NOTIFICATION_MAX_RETRIES=MAX_RETRIES,
    )
    in_flight: list[set[int]] = []
    for kill in range(KILLS):
        proc = spawn(env, tmp_path / f"daemon-{kill}.log")
        try:
            # A random point: this daemon has recorded 50 to 250 rows, plus up to 50 ms.
            await wait_until(sent_by(clean_db, proc.pid, rng.randint(50, 250)), timeout=30)
            await asyncio.sleep(rng.uniform(0, 0.05))
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(10) == -signal.SIGKILL
        finally:
            stop_process(proc)
        held = in_flight_of(db, proc.pid)
        in_flight.append(held)
        assert 0 < len(held) <= WORKERS * BATCH, f"kill {kill + 1} held {len(held)} rows"
        assert await count(clean_db, "status = 'sent'") < len(ids), "the burst ended too soon"

    last = spawn(env, tmp_path / "daemon-last.log")
    try:
        # The dead daemons' rows come back as their 2 s leases expire.
        await count_reaches(clean_db, len(ids), "status = 'sent'", timeout=60)
        last.send_signal(signal.SIGTERM)
        assert last.wait(15) == 0
    finally:
        stop_process(last)

    # Every notification ended sent; the in-app ones exactly once, by construction.
    assert db.execute(
        "select count(*), count(distinct notification_id) from pgnotify.inbox"
    ).fetchone() == (PER_CHANNEL, PER_CHANNEL)
    received = message_id_counts(smtp_server.messages)
    assert {notification_id(m) for m in received} == emails
    # A duplicate is a row some kill caught in flight, once per such kill at most.
    caught = Counter(i for held in in_flight for i in held)
    duplicates = {notification_id(m): n - 1 for m, n in received.items() if n > 1}
    for row, extra in duplicates.items():
        assert extra <= caught[row], f"row {row} sent {extra + 1} times, in flight {caught[row]}"
    bound = sum(len(held & emails) for held in in_flight)
    print(
        f"kill -9 x{KILLS}: in flight per kill {[len(h) for h in in_flight]}"
        f" (in-app {[len(h - emails) for h in in_flight]}),"
        f" {sum(duplicates.values())} duplicate emails (bound {bound}, of {len(emails)})"
    )
    assert sum(duplicates.values()) <= bound <= KILLS * WORKERS * BATCH
