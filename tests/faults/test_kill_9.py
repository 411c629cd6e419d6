"""kill -9 of a daemon mid-batch: the lease brings its rows back, and nothing is lost."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.daemon.harness import (
    count,
    count_reaches,
    env_for,
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

WORKERS = 3
BATCH = 20
BURST = 400


def burst_env(clean_db: str, tmp_path: Path, smtp: SmtpPeer) -> dict[str, str]:
    return env_for(
        clean_db,
        tmp_path / "outbox",
        SMTP_SERVER=smtp.host,
        SMTP_PORT=smtp.port,
        SMTP_SECURITY="none",
        NOTIFICATION_WORKERS=WORKERS,
        NOTIFICATION_BATCH_SIZE=BATCH,
        NOTIFICATION_LEASE_SECONDS=3,
        NOTIFICATION_SEND_TIMEOUT=1,
        NOTIFICATION_HEALTH_ADDR="",
    )


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
