"""Contacts are read when a message is sent, not when it was queued (CONTRACT.md §5).

A real daemon sends to real peers; between queuing and sending, the application reassigns
the booking, changes the customer's contacts or the customer opts out. What is not yet
sent follows the change, and ``recipient`` records where each message actually went.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import psycopg

from tests.daemon.harness import (
    count_reaches,
    make_settings,
    running,
    smtp_settings,
    twilio_settings,
)
from tests.factories import make_booking, make_world
from tests.peers.smtp import SmtpPeer
from tests.peers.twilio import TwilioPeer

Conn = psycopg.Connection[Any]


def queue_confirmation(db: Conn, booking: UUID) -> None:
    """The booking's confirmation on every channel, due now, queued by hand."""
    db.execute(
        "select pgnotify.notify_booking(%s, 'booking_confirmed', array['email', 'sms', 'inapp'])",
        (booking,),
    )


def new_customer(db: Conn, name: str, email: str, phone: str) -> tuple[UUID, UUID]:
    customer, user = uuid4(), uuid4()
    db.execute(
        "insert into booking.customers (id, name, email, phone, user_id)"
        " values (%s, %s, %s, %s, %s)",
        (customer, name, email, phone, user),
    )
    return customer, user


def rows(db: Conn, booking: UUID) -> dict[str, tuple[Any, ...]]:
    """Channel -> (status, recipient, customer_id, last_error) of the booking's rows."""
    return {
        channel: tuple(rest)
        for channel, *rest in db.execute(
            "select channel, status, recipient, customer_id, last_error"
            " from pgnotify.notifications where booking_id = %s and kind = 'booking_confirmed'",
            (booking,),
        ).fetchall()
    }


async def test_a_reassigned_booking_reaches_its_new_customer_on_every_channel(
    db: Conn, clean_db: str, tmp_path: Path, smtp_server: SmtpPeer, twilio_server: TwilioPeer
) -> None:
    """Queued for Ana, reassigned to Bea before it was sent: Bea gets the email, the SMS and
    the in-app message, each row names her and her address, and Ana gets nothing."""
    world = make_world(db, customer_name="Ana Pérez", email="ana@example.com", phone="+34600111222")
    booking = make_booking(db, world, status="pending")
    queue_confirmation(db, booking)
    bea, bea_user = new_customer(db, "Bea Ruiz", "bea@example.com", "+34600333444")
    db.execute("update booking.bookings set customer_id = %s where id = %s", (bea, booking))

    settings = make_settings(
        clean_db, tmp_path, **smtp_settings(smtp_server), **twilio_settings(twilio_server)
    )
    async with running(settings):
        await count_reaches(clean_db, 3, "status = 'sent'")

    (email,) = smtp_server.messages
    assert email.rcpt_tos == ("bea@example.com",)
    assert "Bea Ruiz" in str(email.parsed()["To"])
    (sms,) = twilio_server.messages
    assert sms.to == "+34600333444"
    assert db.execute("select user_id, customer_id from pgnotify.inbox").fetchall() == [
        (bea_user, bea)
    ]
    assert rows(db, booking) == {
        "email": ("sent", "bea@example.com", bea, None),
        "sms": ("sent", "+34600333444", bea, None),
        "inapp": ("sent", str(bea_user), bea, None),
    }


async def test_a_reminder_due_after_a_reassignment_goes_to_the_new_customer(
    db: Conn, clean_db: str, tmp_path: Path, smtp_server: SmtpPeer
) -> None:
    """Reminders are queued when the booking is confirmed, days before they are sent: a
    reassignment in between sends them to the new customer, with her name."""
    world = make_world(db, customer_name="Ana Pérez", email="ana@example.com")
    booking = make_booking(db, world)  # confirmed: confirmation now, reminders later
    db.execute("update pgnotify.notifications set status = 'cancelled' where kind not like 'rem%%'")
    bea, _ = new_customer(db, "Bea Ruiz", "bea@example.com", "+34600333444")
    db.execute("update booking.bookings set customer_id = %s where id = %s", (bea, booking))
    # Time passes: the 24 h email reminder comes due.
    db.execute(
        "update pgnotify.notifications set run_at = now() where kind = 'reminder_24h'"
        " and channel = 'email'"
    )

    async with running(make_settings(clean_db, tmp_path, **smtp_settings(smtp_server))):
        await count_reaches(clean_db, 1, "status = 'sent'")

    (email,) = smtp_server.messages
    assert email.rcpt_tos == ("bea@example.com",)
    message = email.parsed()
    assert "Bea Ruiz" in str(message["To"])
    assert db.execute(
        "select recipient, customer_id from pgnotify.notifications where status = 'sent'"
    ).fetchall() == [("bea@example.com", bea)]


async def test_changed_contacts_apply_to_what_is_not_yet_sent_and_only_to_that(
    db: Conn, clean_db: str, tmp_path: Path, smtp_server: SmtpPeer, twilio_server: TwilioPeer
) -> None:
    """A new email and phone reach the rows still queued; a row already sent keeps the
    address it went to."""
    world = make_world(db, email="old@example.com", phone="+34600111222")
    earlier = make_booking(db, world, status="pending")
    later = make_booking(db, world, status="pending")
    settings = make_settings(
        clean_db, tmp_path, **smtp_settings(smtp_server), **twilio_settings(twilio_server)
    )
    async with running(settings):
        queue_confirmation(db, earlier)
        await count_reaches(clean_db, 3, "status = 'sent'")
    db.execute(
        "update booking.customers set email = ' new@example.com ', phone = '+34600999888'"
        " where id = %s",
        (world.customer_id,),
    )
    queue_confirmation(db, later)
    db.execute(
        "update booking.customers set email = 'newer@example.com', phone = '+34600777666'"
        " where id = %s",
        (world.customer_id,),
    )
    async with running(settings):
        await count_reaches(clean_db, 6, "status = 'sent'")

    assert [m.rcpt_tos for m in smtp_server.messages] == [
        ("old@example.com",),
        ("newer@example.com",),
    ]
    assert [m.to for m in twilio_server.messages] == ["+34600111222", "+34600777666"]
    assert rows(db, earlier)["email"][:2] == ("sent", "old@example.com")
    assert rows(db, earlier)["sms"][:2] == ("sent", "+34600111222")
    assert rows(db, later)["email"][:2] == ("sent", "newer@example.com")
    assert rows(db, later)["sms"][:2] == ("sent", "+34600777666")


async def test_an_opt_out_or_an_invalid_contact_after_queuing_skips_the_row_with_the_reason(
    db: Conn, clean_db: str, tmp_path: Path, smtp_server: SmtpPeer, twilio_server: TwilioPeer
) -> None:
    """The customer opts out of SMS and their email becomes invalid after the rows were
    queued: both are skipped with the reason, and the in-app message still goes."""
    world = make_world(db)
    booking = make_booking(db, world, status="pending")
    queue_confirmation(db, booking)
    db.execute(
        "insert into pgnotify.opt_outs (customer_id, channel, reason) values (%s, 'sms', 'STOP')",
        (world.customer_id,),
    )
    db.execute(
        "update booking.customers set email = 'ana at example.com' where id = %s",
        (world.customer_id,),
    )

    settings = make_settings(
        clean_db, tmp_path, **smtp_settings(smtp_server), **twilio_settings(twilio_server)
    )
    async with running(settings):
        await count_reaches(clean_db, 3, "status in ('sent', 'skipped')")

    assert smtp_server.messages == [] and twilio_server.messages == []
    result = rows(db, booking)
    assert result["sms"][0] == "skipped"
    assert result["sms"][3] == "customer opted out of sms (STOP)"
    assert result["email"][0] == "skipped"
    assert result["email"][3] == "customer email is not a valid address"
    assert result["inapp"][0] == "sent"
