"""Replies through real sends (CONTRACT.md §7): a customer who replies STOP gets no SMS
until they reply START, HELP is answered even meanwhile, and nothing of it needs Twilio to
refuse a send first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg

from tests.daemon.harness import count_reaches, make_settings, running, twilio_settings
from tests.factories import make_booking, make_world
from tests.peers.twilio import TwilioPeer

Conn = psycopg.Connection[Any]
PHONE = "+34600111222"


def reply(db: Conn, body: str, sid: str) -> None:
    """The application's SMS webhook, as the README shows it."""
    db.execute(
        "insert into pgnotify.inbound_messages (from_address, to_address, body, provider_id)"
        " values (%s, %s, %s, %s) on conflict do nothing",
        (PHONE, "+15005550006", body, sid),
    )


async def deliver(clean_db: str, tmp_path: Path, twilio: TwilioPeer) -> None:
    async with running(make_settings(clean_db, tmp_path, **twilio_settings(twilio))):
        await count_reaches(
            clean_db, 0, "status in ('pending', 'sending') and run_at <= now()", timeout=30
        )


async def test_stop_then_start_round_trip_through_real_sends(
    db: Conn, clean_db: str, tmp_path: Path, twilio_server: TwilioPeer
) -> None:
    world = make_world(db, email=None, with_user=False, phone=PHONE)
    reply(db, "Stop", "SM-stop")
    stopped = make_booking(db, world)
    reply(db, "HELP", "SM-help")
    await deliver(clean_db, tmp_path, twilio_server)
    # Nothing but the answer to HELP reached the number; the booking's SMS were skipped
    # with the reason, not failed by Twilio.
    assert [(m.to, "Fade & Co" in m.body) for m in twilio_server.messages] == [(PHONE, True)]
    assert db.execute(
        "select distinct status, last_error from pgnotify.notifications"
        " where booking_id = %s and kind = 'booking_confirmed' and channel = 'sms'",
        (stopped,),
    ).fetchall() == [("skipped", "customer opted out of sms (replied STOP)")]

    reply(db, "start", "SM-start")
    reply(db, "start", "SM-start")  # Twilio's retry of the same webhook
    again = make_booking(db, world)
    await deliver(clean_db, tmp_path, twilio_server)
    (sid,) = db.execute(
        "select provider_id from pgnotify.notifications where booking_id = %s"
        " and kind = 'booking_confirmed' and channel = 'sms' and status = 'sent'",
        (again,),
    ).fetchone() or (None,)
    assert [m.to for m in twilio_server.messages if m.sid == sid] == [PHONE]
    assert db.execute(
        "select body, action from pgnotify.inbound_messages order by id"
    ).fetchall() == [("Stop", "opt_out"), ("HELP", "help"), ("start", "opt_in")]
