"""SMTP and Twilio misbehave: every row is retried per policy, then delivered on recovery.

A real daemon (on the test's loop) sends to the real peers of ``tests/peers``. A trigger
records every claim and outcome (``history.py``), so the policy is checked exactly: the
attempts of each row, what ``last_error`` said after each failed one, how long the row
was told to wait (the configured delay ± 10 % jitter, or the provider's Retry-After),
and that no claim came before that wait was over.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgnotify.settings import Settings
from tests.daemon.harness import (
    count_reaches,
    make_settings,
    message_id_counts,
    queue_burst,
    quiet_booking,
    running,
    smtp_settings,
    twilio_settings,
    wait_until,
)
from tests.faults.history import Attempt, History
from tests.peers.smtp import SmtpPeer
from tests.peers.twilio import TwilioPeer

pytestmark = pytest.mark.faults

Conn = psycopg.Connection[Any]

ROWS = 5  # one batch; SMTP_POOL_SIZE matches, so no send waits for a connection slot
DELAYS = (0.3, 0.6)
SEND_TIMEOUT = 1.0
STALL = SEND_TIMEOUT + 1.0


def fault_settings(clean_db: str, tmp_path: Path, **peer: Any) -> Settings:
    return make_settings(
        clean_db,
        tmp_path / "outbox",
        NOTIFICATION_RETRY_DELAYS=DELAYS,
        NOTIFICATION_MAX_RETRIES=8,
        NOTIFICATION_SEND_TIMEOUT=SEND_TIMEOUT,
        NOTIFICATION_LEASE_SECONDS=3.0,
        NOTIFICATION_BATCH_SIZE=ROWS,
        SMTP_POOL_SIZE=ROWS,
        **peer,
    )


def assert_retried_per_policy(
    attempts: dict[int, list[Attempt]], error: str, *, retry_after: float | None = None
) -> int:
    """Every row failed at least once saying ``error`` (a regex), waited, then was sent.

    Returns the number of failed attempts over all rows.
    """
    failures = 0
    for row, tries in attempts.items():
        *retried, last = tries
        assert retried, f"row {row} was never retried"
        assert [a.number for a in tries] == list(range(1, len(tries) + 1)), row
        assert (last.status, last.error) == ("sent", None), (row, last)
        for a, following in zip(retried, tries[1:], strict=True):
            assert a.status == "pending", (row, a)
            assert a.error is not None
            assert a.error.startswith(f"attempt {a.number} failed, retrying: "), a.error
            assert re.search(error, a.error), a.error
            if retry_after is None:
                base = DELAYS[min(a.number, len(DELAYS)) - 1]
                assert base * 0.9 - 1e-3 <= a.delay <= base * 1.1 + 1e-3, (row, a)
            else:
                assert a.delay == pytest.approx(retry_after), (row, a)
            assert a.ended_at is not None
            waited = (following.claimed_at - a.ended_at).total_seconds()
            assert waited >= a.delay - 1e-3, f"row {row} claimed {waited:.3f}s after {a}"
        failures += len(retried)
    return failures


async def stalls_over(started: float) -> None:
    """Wait until every stalled transaction the peer started has ended, one way or another.

    Only then can a test count what the peer accepted: a stalled copy that the server
    still took after the daemon gave up would arrive late, as a duplicate.
    """
    await asyncio.sleep(max(0.0, started + STALL + 0.5 - time.monotonic()))


def attempts_column(db: Conn, ids: list[int]) -> dict[int, int]:
    rows = db.execute(
        "select id, attempts from pgnotify.notifications where id = any(%s) and status = 'sent'",
        (ids,),
    ).fetchall()
    return {r[0]: r[1] for r in rows}


def email_rows(db: Conn) -> list[int]:
    return queue_burst(db, quiet_booking(db, phone=None, with_user=False), ROWS)


def sms_rows(db: Conn) -> list[int]:
    return queue_burst(db, quiet_booking(db, email=None, with_user=False), ROWS, ("sms",))


# -- SMTP -----------------------------------------------------------------------------------


async def test_an_smtp_server_that_is_down_then_back_on_its_port_gets_every_row(
    db: Conn, clean_db: str, tmp_path: Path, history: History
) -> None:
    peer = SmtpPeer().start()
    peer.stop()  # its port now refuses connections
    ids = email_rows(db)
    async with running(fault_settings(clean_db, tmp_path, **smtp_settings(peer))):
        await wait_until(lambda: history.failures_reach(ids, 2), timeout=15)
        back = SmtpPeer(port=peer.port).start()
        try:
            await count_reaches(clean_db, ROWS, "status = 'sent'", timeout=15)
        finally:
            back.stop()
    attempts = history.attempts(ids)
    failures = assert_retried_per_policy(
        attempts, rf"SMTP connection: .*127\.0\.0\.1.*{peer.port}.*(refused|failed)"
    )
    assert failures >= 2 * ROWS
    assert attempts_column(db, ids) == {i: len(a) for i, a in attempts.items()}
    assert set(message_id_counts(back.messages).values()) == {1}
    assert len(back.messages) == ROWS


async def test_an_smtp_server_stalling_past_the_send_timeout_gets_every_row_once(
    db: Conn, clean_db: str, tmp_path: Path, smtp_server: SmtpPeer, history: History
) -> None:
    ids = email_rows(db)
    smtp_server.stall_next(STALL, count=ROWS)  # the first transaction of every row
    started = time.monotonic()
    async with running(fault_settings(clean_db, tmp_path, **smtp_settings(smtp_server))):
        await count_reaches(clean_db, ROWS, "status = 'sent'", timeout=15)
    await stalls_over(started)
    failures = assert_retried_per_policy(
        history.attempts(ids), rf"SMTP send to .* timed out after {SEND_TIMEOUT:g}s"
    )
    assert failures == ROWS
    # The client hung up on each stalled DATA before the server's answer; aiosmtpd then
    # drops that copy. (An MTA that queued it anyway would make the classic duplicate of
    # RFC 1047, same Message-ID: counted here as more than one.)
    assert set(message_id_counts(smtp_server.messages).values()) == {1}
    assert len(smtp_server.messages) == ROWS


@pytest.mark.parametrize(
    ("reply", "stage"),
    [
        ("421 4.3.2 Service not available, closing transmission channel", "RCPT"),
        ("451 4.3.0 Requested action aborted: local error in processing", "DATA"),
    ],
    ids=["421-at-RCPT", "451-at-DATA"],
)
async def test_temporary_smtp_replies_are_retried_per_policy_then_delivered(
    db: Conn,
    clean_db: str,
    tmp_path: Path,
    smtp_server: SmtpPeer,
    history: History,
    reply: str,
    stage: str,
) -> None:
    ids = email_rows(db)
    smtp_server.fail_next(reply, count=2 * ROWS, stage=stage)
    async with running(fault_settings(clean_db, tmp_path, **smtp_settings(smtp_server))):
        await count_reaches(clean_db, ROWS, "status = 'sent'", timeout=15)
    attempts = history.attempts(ids)
    failures = assert_retried_per_policy(attempts, re.escape(f"SMTP {reply}"))
    assert failures == 2 * ROWS  # each refused transaction is one failed attempt
    assert attempts_column(db, ids) == {i: len(a) for i, a in attempts.items()}
    assert set(message_id_counts(smtp_server.messages).values()) == {1}
    assert len(smtp_server.messages) == ROWS


# -- Twilio ---------------------------------------------------------------------------------


def twilio_500(peer: TwilioPeer) -> None:
    peer.fail_next(500, code=20500, message="Internal Server Error", count=2 * ROWS)


def twilio_stall(peer: TwilioPeer) -> None:
    peer.stall_next(STALL, count=ROWS)


@pytest.mark.parametrize(
    ("inject", "error", "failed"),
    [
        (twilio_500, r"Twilio HTTP 500 code 20500: .*Internal Server Error", 2 * ROWS),
        (twilio_stall, rf"Twilio request to .* timed out after {SEND_TIMEOUT:g}s", ROWS),
    ],
    ids=["500", "stall"],
)
async def test_a_failing_twilio_gets_every_sms_retried_per_policy_then_delivered(
    db: Conn,
    clean_db: str,
    tmp_path: Path,
    twilio_server: TwilioPeer,
    history: History,
    inject: Callable[[TwilioPeer], None],
    error: str,
    failed: int,
) -> None:
    ids = sms_rows(db)
    inject(twilio_server)
    started = time.monotonic()
    async with running(fault_settings(clean_db, tmp_path, **twilio_settings(twilio_server))):
        await count_reaches(clean_db, ROWS, "status = 'sent'", timeout=15)
    if inject is twilio_stall:
        await stalls_over(started)
    attempts = history.attempts(ids)
    assert assert_retried_per_policy(attempts, error) == failed
    assert attempts_column(db, ids) == {i: len(a) for i, a in attempts.items()}
    sids = db.execute(
        "select provider_id from pgnotify.notifications where id = any(%s)", (ids,)
    ).fetchall()
    received = twilio_server.messages
    assert {r[0] for r in sids} == {m.sid for m in received}
    # One SMS per row. The peer reads a stalled request's form only after the stall, and
    # the daemon had hung up by then, so nothing was created twice. (A provider that read
    # it and then stalled would create one extra SMS per stall: Twilio has no idempotency
    # key for Messages, and pgnotify delivers at least once.)
    assert len(received) == ROWS


async def test_twilio_429_is_retried_after_its_retry_after_not_the_policy_delay(
    db: Conn, clean_db: str, tmp_path: Path, twilio_server: TwilioPeer, history: History
) -> None:
    ids = sms_rows(db)
    # Retry-After (1 s) is longer than the policy's first delay (0.3 s): honouring it shows.
    twilio_server.fail_next(
        429, code=20429, message="Too Many Requests", retry_after="1", count=ROWS
    )
    async with running(fault_settings(clean_db, tmp_path, **twilio_settings(twilio_server))):
        await count_reaches(clean_db, ROWS, "status = 'sent'", timeout=15)
    attempts = history.attempts(ids)
    failures = assert_retried_per_policy(
        attempts, r"Twilio HTTP 429 code 20429: .*Too Many Requests", retry_after=1.0
    )
    assert failures == ROWS
    assert len(twilio_server.messages) == ROWS
