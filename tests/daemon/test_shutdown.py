"""SIGTERM during a burst: in-flight work ends cleanly, the rest goes back, exit code 0."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import psycopg

from tests.daemon.harness import (
    BATCH,
    WORKERS,
    burst_env,
    count_reaches,
    message_id_counts,
    queue_burst,
    quiet_booking,
    spawn,
    states,
    stop_process,
    wait_until,
)
from tests.peers.smtp import SmtpPeer

Conn = psycopg.Connection[Any]

BURST = 300
# Stalls and timeouts are far apart so that a loaded machine cannot blur them: a stalled
# send outlasts any shutdown, and a send that merely waits for one of the four pooled SMTP
# connections (60 in flight share them) never hits its timeout or outlives its lease.
STALL = 60.0
PATIENT = {"NOTIFICATION_SEND_TIMEOUT": 120, "NOTIFICATION_LEASE_SECONDS": 180}


async def test_sigterm_during_a_burst_finishes_in_flight_sends_and_exits_0(
    db: Conn, clean_db: str, tmp_path: Path, smtp_server: SmtpPeer
) -> None:
    """In-flight sends finish and are recorded once; the rest go back unspent; exit 0."""
    ids = queue_burst(db, quiet_booking(db, phone=None, with_user=False), BURST)
    smtp_server.stall_next(0.02, count=BURST)  # so the signal lands mid-burst
    # A grace long enough for every in-flight send, even on a loaded machine: this test
    # is about finishing them (the grace running out is the next tests' subject).
    env = burst_env(clean_db, tmp_path, smtp_server, NOTIFICATION_SHUTDOWN_GRACE=30, **PATIENT)
    proc = spawn(env, tmp_path / "daemon.log")
    try:
        await wait_until(lambda: len(smtp_server.messages) >= BURST // 5, timeout=30)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(45) == 0
    finally:
        stop_process(proc)

    after = states(db, ids)
    sent = {i for i, (status, _, _) in after.items() if status == "sent"}
    pending = {i for i, (status, _, _) in after.items() if status == "pending"}
    assert sent and pending, "the signal did not land mid-burst"
    assert sent | pending == set(ids)
    assert {after[i][1] for i in sent} == {1}
    assert {after[i][1] for i in pending} == {0}
    # What went out was recorded, exactly once; nothing released had been handed over.
    received = message_id_counts(smtp_server.messages)
    assert set(received) == {after[i][2] for i in sent}
    assert set(received.values()) == {1}

    proc = spawn(env, tmp_path / "daemon.log")
    try:
        await count_reaches(clean_db, BURST, "status = 'sent'", timeout=60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(45) == 0
    finally:
        stop_process(proc)
    received = message_id_counts(smtp_server.messages)
    assert len(received) == BURST
    assert set(received.values()) == {1}


async def test_sigterm_past_the_grace_releases_unsent_rows_without_spending_attempts(
    db: Conn, clean_db: str, tmp_path: Path, smtp_server: SmtpPeer
) -> None:
    """Sends stalled past the grace are cancelled; every row goes back with its attempt."""
    ids = queue_burst(db, quiet_booking(db, phone=None, with_user=False), BURST)
    # The server sits on the first transactions' RCPT far longer than the grace period
    # (and within the send timeout, so no send gives up before the signal).
    smtp_server.stall_next(STALL, count=4, stage="RCPT")
    env = burst_env(clean_db, tmp_path, smtp_server, NOTIFICATION_SHUTDOWN_GRACE=0.5, **PATIENT)
    proc = spawn(env, tmp_path / "daemon.log")
    try:
        # Every worker holds a full batch: four sends stalled, the rest waiting for them.
        await count_reaches(clean_db, WORKERS * BATCH, "status = 'sending'", timeout=20)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(STALL / 2) == 0, "shutdown waited for the stalled sends"
        stopped_in = time.monotonic() - signalled
    finally:
        stop_process(proc)

    # The grace (0.5 s) ended it, not the stalled sends (60 s): a bound between the two.
    assert stopped_in < STALL / 3, "shutdown waited for the stalled sends instead of the grace"
    after = states(db, ids)
    assert {status for status, _, _ in after.values()} == {"pending"}
    assert {attempts for _, attempts, _ in after.values()} == {0}
    released = db.execute(
        "select count(*) from pgnotify.notifications where id = any(%s)"
        " and last_error = 'released at shutdown before it was sent'",
        (ids,),
    ).fetchone()
    assert released == (WORKERS * BATCH,)
    assert smtp_server.messages == []


async def test_sigterm_past_the_grace_records_what_finished_and_releases_the_rest(
    db: Conn, clean_db: str, tmp_path: Path, smtp_server: SmtpPeer
) -> None:
    """Of a batch cut by the grace, the sends that finished are recorded sent, once."""
    ids = queue_burst(db, quiet_booking(db, phone=None, with_user=False), 5)
    # One batch of five over four SMTP connections: one send stalls, the other four go out.
    smtp_server.stall_next(STALL, stage="RCPT")
    env = burst_env(
        clean_db,
        tmp_path,
        smtp_server,
        NOTIFICATION_WORKERS=1,
        NOTIFICATION_BATCH_SIZE=5,
        NOTIFICATION_SHUTDOWN_GRACE=0.5,
        **PATIENT,
    )
    proc = spawn(env, tmp_path / "daemon.log")
    try:
        await wait_until(lambda: len(smtp_server.messages) == 4, timeout=30)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(STALL / 2) == 0
    finally:
        stop_process(proc)

    after = states(db, ids)
    sent = {provider_id for status, _, provider_id in after.values() if status == "sent"}
    assert sorted((status, attempts) for status, attempts, _ in after.values()) == [
        ("pending", 0),
        *[("sent", 1)] * 4,
    ]
    received = message_id_counts(smtp_server.messages)
    assert set(received) == sent
