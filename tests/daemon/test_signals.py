"""Ctrl-C and a second signal, sent to a real ``pgnotify run`` in the middle of its sends.

SIGINT (Ctrl-C in a terminal) stops the daemon exactly as SIGTERM does: finished sends
are recorded, the rest is released with its attempt given back, exit code 0. A second
signal during the graceful wait means "stop now": the daemon stops waiting for the stalled
send, still records what finished and releases the rest, and exits 1; nothing is lost and
nothing that went out is sent again.

One worker claims one batch of five emails; the SMTP peer sits on one of them at RCPT
(nothing handed over) while the other four go out, so a signal always lands mid-batch.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import psycopg

from tests.daemon.harness import (
    burst_env,
    count_reaches,
    logged,
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

BATCH = 5


async def test_ctrl_c_stops_like_sigterm_recording_finished_sends_and_releasing_the_rest(
    db: Conn, clean_db: str, tmp_path: Path, smtp_server: SmtpPeer
) -> None:
    """SIGINT: four sent and recorded, the stalled one pending with attempts 0, exit 0."""
    ids = queue_burst(db, quiet_booking(db, phone=None, with_user=False), BATCH)
    smtp_server.stall_next(10.0, stage="RCPT")
    env = burst_env(
        clean_db,
        tmp_path,
        smtp_server,
        NOTIFICATION_WORKERS=1,
        NOTIFICATION_BATCH_SIZE=BATCH,
        NOTIFICATION_SHUTDOWN_GRACE=0.5,
        NOTIFICATION_SEND_TIMEOUT=20,
        NOTIFICATION_LEASE_SECONDS=30,
    )
    log = tmp_path / "daemon.log"
    proc = spawn(env, log)
    try:
        await wait_until(lambda: len(smtp_server.messages) == BATCH - 1, timeout=20)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
    finally:
        stop_process(proc)

    assert [e["signal"] for e in logged(log, "stopping")] == ["SIGINT"]
    after = states(db, ids)
    assert sorted((status, attempts) for status, attempts, _ in after.values()) == [
        ("pending", 0),
        *[("sent", 1)] * (BATCH - 1),
    ]
    sent = {provider_id for status, _, provider_id in after.values() if status == "sent"}
    assert set(message_id_counts(smtp_server.messages)) == sent


async def test_a_second_sigterm_during_the_grace_exits_at_once_and_loses_nothing(
    db: Conn, clean_db: str, tmp_path: Path, smtp_server: SmtpPeer
) -> None:
    """The first SIGTERM waits for the stalled send; the second ends the wait: exit 1.

    The four finished sends are recorded as sent, the stalled one is released with its
    attempt given back, and a daemon started afterwards sends only that one.
    """
    ids = queue_burst(db, quiet_booking(db, phone=None, with_user=False), BATCH)
    stall = 8.0
    smtp_server.stall_next(stall, stage="RCPT")
    env = burst_env(
        clean_db,
        tmp_path,
        smtp_server,
        NOTIFICATION_WORKERS=1,
        NOTIFICATION_BATCH_SIZE=BATCH,
        # The grace outlasts the stall: only the second signal can end the wait early.
        NOTIFICATION_SHUTDOWN_GRACE=30,
        NOTIFICATION_SEND_TIMEOUT=stall + 1,
        NOTIFICATION_LEASE_SECONDS=stall + 2,
    )
    log = tmp_path / "daemon.log"
    proc = spawn(env, log)
    try:
        await wait_until(lambda: len(smtp_server.messages) == BATCH - 1, timeout=20)
        proc.send_signal(signal.SIGTERM)
        await wait_until(lambda: logged(log, "stopping"), timeout=5)
        assert proc.poll() is None, "the first SIGTERM did not wait for the stalled send"
        second = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 1
        exited_in = time.monotonic() - second
    finally:
        stop_process(proc)

    assert exited_in < 3.0, "the second signal waited for the stalled send"
    assert logged(log, "second_signal_stop_now")
    held = states(db, ids)
    assert sorted(status for status, _, _ in held.values()) == ["pending"] + ["sent"] * (BATCH - 1)
    assert [attempts for status, attempts, _ in held.values() if status == "pending"] == [0]

    proc = spawn(env, tmp_path / "daemon-2.log")
    try:
        await count_reaches(clean_db, BATCH, "status = 'sent'", timeout=30)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        stop_process(proc)
    after = states(db, ids)
    assert {status for status, _, _ in after.values()} == {"sent"}
    # Exactly once: every message arrived, none twice.
    counts = message_id_counts(smtp_server.messages)
    assert set(counts) == {p for _, _, p in after.values()}
    assert set(counts.values()) == {1}
