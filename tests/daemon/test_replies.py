"""Replies through real sends (CONTRACT.md §7): a customer who replies STOP gets no SMS
until they reply START, HELP is answered even meanwhile, and nothing of it needs Twilio to
refuse a send first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgnotify.errors import SettingsError
from pgnotify.settings import load_settings
from tests.daemon.harness import (
    count_reaches,
    make_settings,
    running,
    twilio_settings,
    wait_until,
)
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


async def test_the_poller_inserts_each_reply_from_twilios_list_once(
    db: Conn, clean_db: str, tmp_path: Path, twilio_server: TwilioPeer
) -> None:
    """NOTIFICATION_INBOUND_POLL: Twilio's Messages list, every page, into the table; a
    reply the webhook inserted first, or one seen by an earlier poll, is not inserted again."""
    world = make_world(db, email=None, with_user=False, phone=PHONE)
    ours = twilio_settings(twilio_server)["TWILIO_PHONE_NUMBER"]
    twilio_server.max_page_size = 1  # every reply on its own page
    stop = twilio_server.receive(PHONE, "STOP", to=ours)
    webhook = twilio_server.receive(PHONE, "HELP", to=ours)
    reply(db, "HELP", webhook)  # the webhook got this one first

    def inbound() -> int:
        row = db.execute("select count(*) from pgnotify.inbound_messages").fetchone()
        return int(row[0]) if row else 0

    def lists() -> int:
        return sum(1 for m, p in twilio_server.requests if m == "GET" and "Messages" in p)

    settings = make_settings(
        clean_db, tmp_path, NOTIFICATION_INBOUND_POLL=0.2, **twilio_settings(twilio_server)
    )
    async with running(settings):
        await wait_until(lambda: inbound() == 2)
        later = twilio_server.receive(PHONE, "start", to=ours)
        await wait_until(lambda: inbound() == 3)
        seen = lists()
        await wait_until(lambda: lists() >= seen + 6)  # a few more polls, nothing new
    rows = db.execute(
        "select provider_id, body, action from pgnotify.inbound_messages order by id"
    ).fetchall()
    assert rows == [
        (webhook, "HELP", "help"),
        (stop, "STOP", "opt_out"),
        (later, "start", "opt_in"),
    ]
    assert db.execute(
        "select count(*) from pgnotify.opt_outs where customer_id = %s", (world.customer_id,)
    ).fetchone() == (0,)


@pytest.mark.parametrize("seconds", ["-1", "inf", "nan", "1e9"])
def test_the_inbound_poll_must_be_zero_or_a_finite_number_of_seconds(seconds: str) -> None:
    with pytest.raises(SettingsError, match="NOTIFICATION_INBOUND_POLL"):
        load_settings(_env_file=None, NOTIFICATION_INBOUND_POLL=seconds)


def test_the_inbound_poll_is_off_by_default() -> None:
    assert load_settings(_env_file=None).NOTIFICATION_INBOUND_POLL == 0
