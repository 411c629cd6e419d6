"""A real daemon against the real database and real peers: delivery, timing, outcomes."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trustme

from pgnotify.compose import Composer
from pgnotify.db import create_pool
from pgnotify.runtime import Runtime, Shared
from pgnotify.templates import TemplateRenderer
from pgnotify.worker import Worker
from tests.daemon.harness import (
    count,
    count_reaches,
    make_settings,
    next_notify,
    running,
    smtp_settings,
    twilio_settings,
    wait_until,
)
from tests.factories import make_booking, make_world
from tests.peers.smtp import SmtpPeer
from tests.peers.twilio import TwilioPeer

Conn = psycopg.Connection[Any]


# The poll is the safety net, not the mechanism: with it at 60 s, anything delivered within
# a few seconds was woken for. The bound is generous on purpose (a loaded 2-core box): it
# proves the mechanism, never the speed (``make bench`` measures latency).
POLL = 60.0
WOKEN_WITHIN = 10.0


async def test_a_due_row_is_woken_for_by_notify_not_left_to_the_poll(
    db: Conn, clean_db: str, tmp_path: Path
) -> None:
    """A booking committed while the daemon idles is delivered long before the next poll."""
    world = make_world(db)
    settings = make_settings(clean_db, tmp_path, NOTIFICATION_POLL_INTERVAL=POLL)
    async with (
        running(settings),
        await psycopg.AsyncConnection.connect(clean_db, autocommit=True) as inbox,
    ):
        await inbox.execute("listen pgnotify_inbox")
        await asyncio.sleep(0.3)  # let the start-up claim round pass: it must not be what wakes
        committed = time.monotonic()
        make_booking(db, world)
        note = await next_notify(inbox, WOKEN_WITHIN + 5)
        elapsed = time.monotonic() - committed
        assert note.payload == str(world.user_id)
        assert elapsed < WOKEN_WITHIN, f"in-app delivery took {elapsed:.1f}s with a {POLL:g} s poll"
        await wait_until(lambda: count(clean_db, "status = 'sent'"), timeout=10)


async def notifies(conn: psycopg.AsyncConnection[Any], timeout: float) -> list[psycopg.Notify]:
    """Every NOTIFY the listening ``conn`` receives within ``timeout`` seconds."""
    return [note async for note in conn.notifies(timeout=timeout)]


async def test_with_wakeups_off_a_booking_is_delivered_by_polling_without_any_notify(
    db: Conn, clean_db: str, tmp_path: Path
) -> None:
    """``pgnotify.settings.wakeup_notify = false``: a booking committed while the daemon
    idles sends no NOTIFY on the daemon's channel and is still delivered, by the adaptive
    poll, within its interval. The operator's UPDATE turns wake-ups back on for the next."""
    world = make_world(db)
    db.execute("update pgnotify.settings set wakeup_notify = false")
    settings = make_settings(clean_db, tmp_path, NOTIFICATION_POLL_INTERVAL=2.0)
    async with (
        running(settings),
        await psycopg.AsyncConnection.connect(clean_db, autocommit=True) as listener,
    ):
        await listener.execute("listen pgnotify")
        await asyncio.sleep(0.3)
        booking = make_booking(db, world)

        async def delivered() -> bool:
            return await count(clean_db, "booking_id = %s and status = 'sent'", (booking,)) == 3

        await wait_until(delivered, timeout=WOKEN_WITHIN)
        assert await notifies(listener, 0.5) == []

        db.execute("update pgnotify.settings set wakeup_notify = true")
        make_booking(db, world)
        assert (await next_notify(listener, WOKEN_WITHIN)).payload == "wake"


async def test_workers_tell_the_scheduler_when_they_find_work(
    db: Conn, clean_db: str, tmp_path: Path
) -> None:
    """With wake-ups off the scheduler polls every 50 ms while the workers find work
    (``stats.last_work_at``) and backs off while they find none, so each way of taking rows
    must report what it took: the in-app lock and the lease claim, and neither when it found
    nothing (a poll that never quickens left rows waiting up to the backed-off poll)."""
    world = make_world(db)
    settings = make_settings(clean_db, tmp_path)
    pool = await create_pool(settings)
    composer = Composer(settings, TemplateRenderer.from_settings(settings))
    rt = Runtime(settings, "work-test", pool, composer, {}, Shared())
    worker = Worker(rt, 0)
    try:
        assert await worker.deliver_inapp() == 0 and await worker.claim() == []
        assert rt.stats.last_work_at is None

        make_booking(db, world)
        assert await worker.deliver_inapp() == 1
        assert rt.stats.last_work_at is not None
        rt.stats.last_work_at = None
        assert [n.channel for n in await worker.claim()] == ["email", "sms"]
        assert rt.stats.last_work_at is not None
    finally:
        await pool.close()
        composer.close()


async def test_a_row_scheduled_ahead_fires_at_its_run_at_not_at_the_next_poll(
    db: Conn, clean_db: str, tmp_path: Path
) -> None:
    """The scheduler sleeps until the earliest ``run_at``: never past the poll, never early."""
    world = make_world(db)
    booking = make_booking(db, world)
    db.execute("update pgnotify.notifications set status = 'cancelled'")  # only ours below
    settings = make_settings(clean_db, tmp_path, NOTIFICATION_POLL_INTERVAL=POLL)
    async with (
        running(settings),
        await psycopg.AsyncConnection.connect(clean_db, autocommit=True) as inbox,
    ):
        await inbox.execute("listen pgnotify_inbox")
        await asyncio.sleep(0.2)
        queued = time.monotonic()
        (row,) = db.execute(
            "select pgnotify.notify_booking(%s, 'reminder_2h', array['inapp'],"
            " now() + interval '2 seconds')",
            (booking,),
        ).fetchone() or (None,)
        await next_notify(inbox, WOKEN_WITHIN + 5)
        elapsed = time.monotonic() - queued
    # Not early, by the database's own clock (the one run_at is written in).
    (early,) = db.execute(
        "select sent_at < run_at from pgnotify.notifications where id = %s and status = 'sent'",
        (row[0],),
    ).fetchone() or (None,)
    assert early is False, "sent before its run_at"
    # Not left to the poll: the scheduler's own timer woke the workers.
    assert elapsed < WOKEN_WITHIN, f"fired after {elapsed:.1f}s with a {POLL:g} s poll"


async def test_email_sms_and_inapp_reach_their_peers(
    db: Conn,
    clean_db: str,
    tmp_path: Path,
    smtp_server: SmtpPeer,
    twilio_server: TwilioPeer,
) -> None:
    world = make_world(db)
    booking = make_booking(db, world)
    settings = make_settings(
        clean_db, tmp_path, **smtp_settings(smtp_server), **twilio_settings(twilio_server)
    )
    async with running(settings):
        await count_reaches(clean_db, 3, "status = 'sent' and kind = 'booking_confirmed'")
    (email,) = smtp_server.messages
    assert email.rcpt_tos == ("ana@example.com",)
    (sms,) = twilio_server.messages
    assert sms.to == "+34600111222"
    rows = db.execute(
        "select channel, provider_id, attempts from pgnotify.notifications"
        " where booking_id = %s and status = 'sent' order by channel",
        (booking,),
    ).fetchall()
    providers = {r[0]: r[1] for r in rows}
    assert providers["email"].startswith("<pgnotify.")
    assert providers["sms"] == sms.sid
    assert providers["inapp"].startswith("inbox:")
    assert {r[2] for r in rows} == {1}
    (title, data) = db.execute(
        "select title, data from pgnotify.inbox where user_id = %s", (world.user_id,)
    ).fetchone() or (None, None)
    assert title
    assert data["booking_id"] == str(booking)


async def test_transient_errors_are_retried_with_the_configured_delays(
    db: Conn, clean_db: str, tmp_path: Path, smtp_server: SmtpPeer
) -> None:
    world = make_world(db, phone=None, with_user=False)
    booking = make_booking(db, world)
    smtp_server.fail_next("451 4.3.0 try again later", count=2)
    settings = make_settings(
        clean_db, tmp_path, NOTIFICATION_RETRY_DELAYS=(0.5, 1.0), **smtp_settings(smtp_server)
    )
    started = time.monotonic()
    async with running(settings):
        await wait_until(
            lambda: count(clean_db, "status = 'sent' and channel = 'email'"), timeout=10
        )
    elapsed = time.monotonic() - started
    (attempts, last_error) = db.execute(
        "select attempts, last_error from pgnotify.notifications where booking_id = %s"
        " and channel = 'email' and kind = 'booking_confirmed'",
        (booking,),
    ).fetchone() or (None, None)
    assert attempts == 3
    assert last_error is None
    assert len(smtp_server.messages) == 1
    # 0.5 s and 1.0 s, each ± 10 %: the whole story takes at least 1.35 s.
    assert elapsed >= 1.35


async def test_transient_errors_exhaust_retries_then_fail(
    db: Conn, clean_db: str, tmp_path: Path, smtp_server: SmtpPeer
) -> None:
    world = make_world(db, phone=None, with_user=False)
    booking = make_booking(db, world)
    smtp_server.fail_next("451 4.3.0 mailbox busy", count=10)
    settings = make_settings(
        clean_db,
        tmp_path,
        NOTIFICATION_RETRY_DELAYS=(0.1,),
        NOTIFICATION_MAX_RETRIES=2,
        **smtp_settings(smtp_server),
    )
    async with running(settings):
        await wait_until(lambda: count(clean_db, "status = 'failed'"), timeout=10)
    (attempts, last_error) = db.execute(
        "select attempts, last_error from pgnotify.dead_letters where booking_id = %s",
        (booking,),
    ).fetchone() or (None, None)
    assert attempts == 3
    assert "gave up after 3 attempts" in last_error
    assert "451" in last_error


async def test_a_permanent_error_fails_at_once_and_retry_requeues_it(
    db: Conn, clean_db: str, tmp_path: Path, smtp_server: SmtpPeer
) -> None:
    world = make_world(db, phone=None, with_user=False)
    booking = make_booking(db, world)
    smtp_server.fail_next("550 5.1.1 no such user")
    settings = make_settings(clean_db, tmp_path, **smtp_settings(smtp_server))
    async with running(settings):
        await wait_until(lambda: count(clean_db, "status = 'failed'"), timeout=10)
        (row_id, attempts, last_error) = db.execute(
            "select id, attempts, last_error from pgnotify.notifications where booking_id = %s"
            " and status = 'failed'",
            (booking,),
        ).fetchone() or (None, None, None)
        assert attempts == 1
        assert "550" in last_error
        assert db.execute("select pgnotify.retry(%s)", (row_id,)).fetchone() == (True,)
        await wait_until(lambda: count(clean_db, "id = %s and status = 'sent'", (row_id,)))
    assert len(smtp_server.messages) == 1


async def test_rejected_credentials_pause_the_channel_without_spending_attempts(
    db: Conn,
    clean_db: str,
    tmp_path: Path,
    smtp_server_tls: SmtpPeer,
    test_ca: trustme.CA,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The test server's private CA is trusted the way an operator trusts one, before the
    # daemon starts: OpenSSL's SSL_CERT_FILE (no test reaches into the running daemon).
    ca_file = tmp_path / "test-ca.pem"
    test_ca.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    world = make_world(db, phone=None, with_user=False)
    booking = make_booking(db, world)
    settings = make_settings(
        clean_db,
        tmp_path,
        SMTP_SERVER=smtp_server_tls.host,
        SMTP_PORT=smtp_server_tls.port,
        SMTP_SECURITY="starttls",
        SMTP_USERNAME="mailer",
        SMTP_PASSWORD="wrong-password",
    )
    async with running(settings) as daemon:
        await wait_until(lambda: count(clean_db, "last_error like 'channel paused%%'"), timeout=10)
        snap = daemon.snapshot()
        assert snap["channels"]["email"]["state"] == "degraded"
    (status, attempts, last_error) = db.execute(
        "select status, attempts, last_error from pgnotify.notifications where booking_id = %s"
        " and kind = 'booking_confirmed' and channel = 'email'",
        (booking,),
    ).fetchone() or (None, None, None)
    assert status == "pending"
    assert attempts == 0
    assert "535" in last_error


async def test_twilio_stop_reply_fails_the_sms_and_records_an_opt_out(
    db: Conn, clean_db: str, tmp_path: Path, twilio_server: TwilioPeer
) -> None:
    world = make_world(db, email=None, with_user=False)
    twilio_server.fail_next(400, code=21610, message="Attempt to send to unsubscribed recipient")
    make_booking(db, world)
    settings = make_settings(clean_db, tmp_path, **twilio_settings(twilio_server))
    async with running(settings):
        await wait_until(lambda: count(clean_db, "status = 'failed'"), timeout=10)
    assert db.execute(
        "select channel from pgnotify.opt_outs where customer_id = %s", (world.customer_id,)
    ).fetchall() == [("sms",)]
    # The triggers now honour it: the next booking's SMS are skipped at enqueue.
    booking = make_booking(db, world)
    rows = db.execute(
        "select status, last_error from pgnotify.notifications where booking_id = %s"
        " and channel = 'sms'",
        (booking,),
    ).fetchall()
    assert rows and all(r[0] == "skipped" and "opted out" in r[1] for r in rows)


async def test_a_reminder_whose_booking_changed_is_skipped_at_send_time(
    db: Conn, clean_db: str, tmp_path: Path
) -> None:
    world = make_world(db, email=None, phone=None)
    booking = make_booking(db, world, starts_in=timedelta(days=3))
    db.execute("update pgnotify.notifications set status = 'cancelled'")
    (reminder,) = db.execute(
        "select pgnotify.notify_booking(%s, 'reminder_2h', array['inapp'])", (booking,)
    ).fetchone() or (None,)
    # A race left an automatic reminder pending while the booking was cancelled: the
    # trigger is bypassed here to build exactly that state.
    db.execute("set session_replication_role = replica")
    db.execute("update booking.bookings set status = 'cancelled' where id = %s", (booking,))
    db.execute("set session_replication_role = origin")
    db.execute(
        "update pgnotify.notifications set occurrence = pgnotify.starts_key(b.starts_at)"
        " from booking.bookings b where b.id = booking_id and pgnotify.notifications.id = %s",
        (reminder[0],),
    )
    settings = make_settings(clean_db, tmp_path)
    async with running(settings):
        await wait_until(lambda: count(clean_db, "status = 'skipped'"), timeout=10)
    (status, last_error) = db.execute(
        "select status, last_error from pgnotify.notifications where id = %s", (reminder[0],)
    ).fetchone() or (None, None)
    assert status == "skipped"
    assert last_error == "booking is cancelled now; reminder not sent"
    assert db.execute("select count(*) from pgnotify.inbox").fetchone() == (0,)


async def test_the_health_socket_reports_state(db: Conn, clean_db: str, tmp_path: Path) -> None:
    settings = make_settings(clean_db, tmp_path)
    async with running(settings) as daemon:
        assert daemon.health is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.health.port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        raw = await reader.read()
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    snap = json.loads(body)
    assert snap["listener_connected"] is True
    assert snap["channels"]["email"]["mode"] == "outbox"
    assert "notification_queue_usage" in snap
