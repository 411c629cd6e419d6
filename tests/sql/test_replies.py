"""Replies (CONTRACT.md §7): the trigger on `pgnotify.inbound_messages` acts on each one."""

from __future__ import annotations

import importlib.util
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.parse import urlencode
from urllib.request import Request, urlopen
from wsgiref.simple_server import WSGIRequestHandler, make_server

import psycopg
import pytest
from twilio.request_validator import RequestValidator

from tests.factories import make_booking, make_world

Conn = psycopg.Connection[Any]
EXAMPLE_WEBHOOK = Path(__file__).resolve().parents[2] / "examples" / "twilio_webhook.py"

OPT_OUT_WORDS = ["STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"]
PHONE = "+34600111222"


def reply(db: Conn, body: str, *, sender: str = PHONE, sid: str | None = None) -> tuple[Any, ...]:
    """Insert a reply as the application's webhook does; its (action, handled, detail)."""
    row = db.execute(
        "insert into pgnotify.inbound_messages (from_address, to_address, body, provider_id)"
        " values (%s, '+15005550006', %s, %s) on conflict do nothing"
        " returning id",
        (sender, body, sid),
    ).fetchone()
    assert row is not None
    handled = db.execute(
        "select action, handled_at is not null, detail from pgnotify.inbound_messages"
        " where id = %s",
        (row[0],),
    ).fetchone()
    assert handled is not None
    return tuple(handled)


def sms_opt_outs(db: Conn) -> list[tuple[Any, ...]]:
    return db.execute(
        "select customer_id, channel, source from pgnotify.opt_outs order by customer_id, channel"
    ).fetchall()


@pytest.mark.parametrize(
    ("body", "action"),
    [
        *[(w, "opt_out") for w in OPT_OUT_WORDS],
        *[(f"  {w.lower()}\n", "opt_out") for w in OPT_OUT_WORDS],
        ("Start", "opt_in"),
        ("unstop ", "opt_in"),
        ("HELP", "help"),
        (" info", "help"),
        ("c", "confirm"),
        ("Confirm\r\n", "confirm"),
        ("stop it", "none"),
        ("C u there", "none"),
        ("YES", "none"),
        ("", "none"),
        ("S T O P", "none"),
        ("\x0bstop\x0b", "opt_out"),  # a vertical tab is white space
        ("vstopv", "none"),  # the letter v is not
        ("cv", "none"),
    ],
)
def test_the_whole_trimmed_body_in_any_case_decides_the_action(
    db: Conn, body: str, action: str
) -> None:
    make_booking(db, make_world(db))
    assert reply(db, body)[:2] == (action, True)


@pytest.mark.parametrize("word", OPT_OUT_WORDS)
def test_an_opt_out_word_opts_every_customer_with_that_number_out_of_sms(
    db: Conn, word: str
) -> None:
    first = make_world(db, phone="+34 600 111 222")
    second = make_world(db, phone="0034600111222")
    other = make_world(db, phone="+34600999999")
    reply(db, word.lower())
    assert sms_opt_outs(db) == sorted(
        [(first.customer_id, "sms", "keyword"), (second.customer_id, "sms", "keyword")]
    )
    # The triggers honour it at once: the next booking's SMS are skipped.
    booking = make_booking(db, first)
    statuses = db.execute(
        "select distinct status, last_error from pgnotify.notifications"
        " where booking_id = %s and channel = 'sms'",
        (booking,),
    ).fetchall()
    assert statuses == [("skipped", f"customer opted out of sms (replied {word})")]
    assert other.customer_id not in {c for c, *_ in sms_opt_outs(db)}


@pytest.mark.parametrize("word", ["START", "UNSTOP"])
def test_start_removes_only_sms_opt_outs_whatever_their_source(db: Conn, word: str) -> None:
    world = make_world(db)
    db.execute(
        "insert into pgnotify.opt_outs (customer_id, channel, source) values"
        " (%s, 'sms', '21610'), (%s, 'email', 'operator')",
        (world.customer_id, world.customer_id),
    )
    action, _, detail = reply(db, word)
    assert (action, detail) == ("opt_in", "1 sms opt-out(s) removed")
    assert sms_opt_outs(db) == [(world.customer_id, "email", "operator")]


def test_stop_then_start_round_trip_in_the_table(db: Conn) -> None:
    world = make_world(db)
    reply(db, "STOP")
    reply(db, "START")
    assert sms_opt_outs(db) == []
    booking = make_booking(db, world)
    assert {
        s
        for (s,) in db.execute(
            "select status from pgnotify.notifications where booking_id = %s and channel = 'sms'",
            (booking,),
        )
    } == {"pending"}


@pytest.mark.parametrize("word", ["HELP", "info"])
def test_help_queues_sms_help_about_the_latest_booking_even_after_an_opt_out(
    db: Conn, word: str
) -> None:
    older = make_world(db, shop_name="Old Shop")
    make_booking(db, older)
    newer = make_world(db, shop_name="New Shop")
    latest = make_booking(db, newer, status="pending")
    reply(db, "STOP")
    action, _, detail = reply(db, word, sid="SMhelp")
    assert action == "help" and str(latest) in detail
    rows = db.execute(
        "select kind, channel, status, recipient, shop_id, occurrence, run_at <= now(),"
        " held_reason from pgnotify.notifications where kind = 'sms_help'"
    ).fetchall()
    # Carriers require HELP to be answered, opted out or not; at once, never held.
    assert rows == [
        ("sms_help", "sms", "pending", PHONE, newer.shop_id, "reply:SMhelp", True, None)
    ]


def test_help_from_an_unknown_number_queues_nothing_and_says_why(db: Conn) -> None:
    make_booking(db, make_world(db))
    assert reply(db, "HELP", sender="+14155550100") == ("help", True, "no customer has this number")
    assert db.execute(
        "select count(*) from pgnotify.notifications where kind = 'sms_help'"
    ).fetchone() == (0,)


@pytest.mark.parametrize("word", ["C", "confirm"])
def test_confirm_marks_the_next_upcoming_confirmed_booking_only(db: Conn, word: str) -> None:
    world = make_world(db)
    past = make_booking(db, world, starts_in=timedelta(hours=-3))
    pending = make_booking(db, world, starts_in=timedelta(hours=5), status="pending")
    nxt = make_booking(db, world, starts_in=timedelta(days=1))
    later = make_booking(db, world, starts_in=timedelta(days=2))
    before = notification_count(db)
    action, _, detail = reply(db, word)
    assert (action, detail) == ("confirm", f"booking {nxt} confirmed by the customer")
    confirmed = {
        b
        for (b,) in db.execute(
            "select id from booking.bookings where customer_confirmed_at is not null"
        )
    }
    assert confirmed == {nxt}
    assert not confirmed & {past, pending, later}
    assert notification_count(db) == before  # confirming is not a lifecycle event


def test_the_first_confirmation_tells_the_shop_once(db: Conn) -> None:
    """The shop's alert stream shows a customer's C: `shop_customer_confirmed` to the
    shop's email, queued by the first C only (the second confirms nothing new)."""
    world = make_world(db, shop_alerts=True)
    booking = make_booking(db, world, starts_in=timedelta(days=1))
    reply(db, "C", sid="SM-first")
    reply(db, "confirm", sid="SM-again")
    rows = db.execute(
        "select channel, recipient, status, occurrence from pgnotify.notifications"
        " where kind = 'shop_customer_confirmed' and booking_id = %s",
        (booking,),
    ).fetchall()
    assert rows == [("email", "hello@fade.example", "pending", "reply:SM-first")]


def test_a_move_forgets_the_confirmation_and_the_next_c_counts_again(db: Conn) -> None:
    """A C confirms one appointment: moved (or cancelled), the booking no longer claims it,
    and the customer's next C confirms the new time and tells the shop again."""
    world = make_world(db, shop_alerts=True)
    booking = make_booking(db, world, starts_in=timedelta(days=1))
    reply(db, "C", sid="SM-1")
    db.execute(
        "update booking.bookings set starts_at = starts_at + interval '1 day' where id = %s",
        (booking,),
    )
    assert db.execute(
        "select customer_confirmed_at from booking.bookings where id = %s", (booking,)
    ).fetchone() == (None,)
    assert reply(db, "C", sid="SM-2")[2] == f"booking {booking} confirmed by the customer"
    assert db.execute(
        "select occurrence from pgnotify.notifications"
        " where kind = 'shop_customer_confirmed' order by id"
    ).fetchall() == [("reply:SM-1",), ("reply:SM-2",)]
    db.execute(  # an application that sets it in the same UPDATE keeps its value
        "update booking.bookings set starts_at = starts_at + interval '1 hour',"
        " customer_confirmed_at = '2030-01-01 00:00+00' where id = %s",
        (booking,),
    )
    assert db.execute(
        "select customer_confirmed_at is not null from booking.bookings where id = %s",
        (booking,),
    ).fetchone() == (True,)


def test_a_shop_can_switch_the_confirmation_alert_off(db: Conn) -> None:
    world = make_world(db, shop_alerts=True)
    db.execute(
        "insert into pgnotify.routes (shop_id, kind, channel, enabled)"
        " values (%s, 'shop_customer_confirmed', 'email', false)",
        (world.shop_id,),
    )
    make_booking(db, world, starts_in=timedelta(days=1))
    assert reply(db, "C")[0] == "confirm"
    assert db.execute(
        "select count(*) from pgnotify.notifications where kind = 'shop_customer_confirmed'"
    ).fetchone() == (0,)


def notification_count(db: Conn) -> int:
    row = db.execute("select count(*) from pgnotify.notifications").fetchone()
    assert row is not None
    return int(row[0])


def test_a_known_message_sid_is_a_no_op_with_or_without_on_conflict(db: Conn) -> None:
    make_booking(db, make_world(db))
    reply(db, "STOP", sid="SM1")
    db.execute("delete from pgnotify.opt_outs")
    db.execute(
        "insert into pgnotify.inbound_messages (from_address, body, provider_id)"
        " values (%s, 'STOP', 'SM1')",
        (PHONE,),
    )
    assert (
        db.execute(
            "insert into pgnotify.inbound_messages (from_address, body, provider_id)"
            " values (%s, 'STOP', 'SM1') on conflict do nothing returning id",
            (PHONE,),
        ).fetchall()
        == []
    )
    assert db.execute("select count(*) from pgnotify.inbound_messages").fetchone() == (1,)
    assert sms_opt_outs(db) == []  # the retry did not act again


def test_the_client_role_inserts_replies_and_reads_nothing_else(db: Conn) -> None:
    world = make_world(db)
    with db.transaction():
        db.execute("set local role pgnotify_client")
        db.execute(
            "insert into pgnotify.inbound_messages (from_address, to_address, body, provider_id)"
            " values (%s, '+15005550006', 'STOP', 'SMc') on conflict do nothing",
            (PHONE,),
        )
    assert sms_opt_outs(db) == [(world.customer_id, "sms", "keyword")]
    with pytest.raises(psycopg.errors.InsufficientPrivilege), db.transaction():
        db.execute("set local role pgnotify_client")
        db.execute("select * from pgnotify.inbound_messages")


def test_the_conversation_of_a_number_shows_both_directions_newest_first(db: Conn) -> None:
    world = make_world(db, email=None, with_user=False)
    booking = make_booking(db, world, starts_in=timedelta(days=3))
    db.execute(
        "update pgnotify.notifications set status = 'sent', sent_at = now() - interval '1 hour'"
        " where booking_id = %s and kind = 'booking_confirmed'",
        (booking,),
    )
    reply(db, "C")
    reply(db, "STOP")
    rows = db.execute(
        "select direction, message, state from pgnotify.conversations"
        " where phone = pgnotify.e164('+34 600 111 222')"
    ).fetchall()
    # The reminders are pending (shown at their due time, ahead), then the replies, then the
    # confirmation that went an hour ago. Another number's rows are not there.
    assert rows == [
        ("out", "reminder_2h", "pending"),
        ("out", "reminder_24h", "pending"),
        ("in", "STOP", "opt_out"),
        ("in", "C", "confirm"),
        ("out", "booking_confirmed", "sent"),
    ]


def test_the_example_webhook_records_a_reply_once_however_often_twilio_posts_it(
    db: Conn, clean_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = make_world(db)
    spec = importlib.util.spec_from_file_location("twilio_webhook", EXAMPLE_WEBHOOK)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    monkeypatch.setenv("DATABASE_URL", clean_db)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "webhook-token")
    server = make_server("127.0.0.1", 0, example.app, handler_class=_QuietHandler)
    url = f"http://127.0.0.1:{server.server_port}/sms"
    monkeypatch.setenv("WEBHOOK_URL", url)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    fields = {"From": PHONE, "To": "+15005550006", "Body": "STOP", "MessageSid": "SMweb"}
    signed = RequestValidator("webhook-token").compute_signature(url, fields)

    def post(form: dict[str, str], signature: str) -> tuple[int, bytes]:
        request = Request(url, urlencode(form).encode(), {"X-Twilio-Signature": signature})
        try:
            with urlopen(request) as answer:
                return answer.status, answer.read()
        except HTTPError as refused:
            return refused.code, refused.read()

    try:
        # Forged (no or a wrong signature), or signed without a MessageSid: refused.
        assert post({**fields, "Body": "C"}, signed)[0] == 403
        assert post(fields, "")[0] == 403
        unsid = {**fields, "MessageSid": ""}
        assert (
            post(unsid, RequestValidator("webhook-token").compute_signature(url, unsid))[0] == 403
        )
        for _ in range(2):  # Twilio retries a webhook it did not hear back from
            assert post(fields, signed) == (200, b"<Response/>")
    finally:
        server.shutdown()
        server.server_close()
    assert db.execute(
        "select from_address, body, provider_id, action from pgnotify.inbound_messages"
    ).fetchall() == [(PHONE, "STOP", "SMweb", "opt_out")]
    assert sms_opt_outs(db) == [(world.customer_id, "sms", "keyword")]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log on the test's output."""
