"""The ICS SEQUENCE: a small per-booking counter, frozen into each invitation when queued.

It used to be the booking's `updated_at` in whole seconds: a cancellation in the same
second as its invitation carried the same SEQUENCE, so calendars kept the event; and the
value overflows the 32-bit integers of calendar clients in 2038. Now each change of a
booking's status or start time bumps `pgnotify.booking_versions`, and each invitation
email (confirmed, rescheduled, cancelled) freezes the value in `ics_sequence` when it is
queued, so a retry sends the same SEQUENCE.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import psycopg

from pgnotify.ics import ICS_METHODS
from tests.factories import make_booking, make_world, notifications

Conn = psycopg.Connection[Any]


def invitations(db: Conn, booking: UUID) -> list[tuple[str, int | None]]:
    """(kind, ics_sequence) of the booking's invitation emails, in queue order."""
    return [
        (r["kind"], r["ics_sequence"])
        for r in notifications(db, booking)
        if r["channel"] == "email" and r["kind"] in ICS_METHODS
    ]


def test_changes_within_one_second_still_raise_the_sequence(db: Conn) -> None:
    """Confirmed, moved and cancelled in one transaction (one `now()`, one `updated_at`):
    each invitation carries a higher SEQUENCE than the one before."""
    world = make_world(db)
    with db.transaction():
        booking = make_booking(db, world)
        db.execute(
            "update booking.bookings set starts_at = starts_at + interval '1 hour' where id = %s",
            (booking,),
        )
        db.execute("update booking.bookings set status = 'cancelled' where id = %s", (booking,))
    assert invitations(db, booking) == [
        ("booking_confirmed", 0),
        ("booking_rescheduled", 1),
        ("booking_cancelled", 2),
    ]


def test_only_changes_of_status_or_start_time_count(db: Conn) -> None:
    """A price change, or an UPDATE that changes nothing, leaves the version alone."""
    booking = make_booking(db, make_world(db))
    db.execute("update booking.bookings set total_cents = 9900 where id = %s", (booking,))
    db.execute("update booking.bookings set status = status where id = %s", (booking,))
    assert db.execute(
        "select count(*) from pgnotify.booking_versions where booking_id = %s", (booking,)
    ).fetchone() == (0,)
    db.execute("update booking.bookings set status = 'cancelled' where id = %s", (booking,))
    assert invitations(db, booking) == [("booking_confirmed", 0), ("booking_cancelled", 1)]


def test_a_queued_invitation_keeps_its_sequence_through_later_changes_and_retries(
    db: Conn,
) -> None:
    """The value is frozen when queued: later changes of the booking, and an operator's
    retry of the dead letter, send the SEQUENCE the invitation was queued with."""
    booking = make_booking(db, make_world(db))
    ((_, frozen),) = invitations(db, booking)
    (nid,) = [
        r["id"]
        for r in notifications(db, booking)
        if r["kind"] == "booking_confirmed" and r["channel"] == "email"
    ]
    db.execute(
        "update booking.bookings set starts_at = starts_at + interval '1 day' where id = %s",
        (booking,),
    )
    db.execute("update pgnotify.notifications set status = 'failed' where id = %s", (nid,))
    assert db.execute("select pgnotify.retry(%s)", (nid,)).fetchone() == (True,)
    assert db.execute(
        "select status, ics_sequence from pgnotify.notifications where id = %s", (nid,)
    ).fetchone() == ("pending", frozen)


def test_a_manual_invitation_carries_the_current_sequence(db: Conn) -> None:
    """`notify_booking` by hand freezes the booking's version at that moment."""
    booking = make_booking(db, make_world(db))
    db.execute(
        "update booking.bookings set starts_at = starts_at + interval '1 day' where id = %s",
        (booking,),
    )
    db.execute(
        "select pgnotify.notify_booking(%s, 'booking_rescheduled', array['email'])", (booking,)
    )
    assert invitations(db, booking)[-1] == ("booking_rescheduled", 1)


def test_the_sequence_stays_small_whatever_the_booking_clock_says(db: Conn) -> None:
    """A booking stamped after 2038 still gets a small SEQUENCE (the old epoch-seconds
    value no longer fits a signed 32-bit integer then)."""
    booking = make_booking(db, make_world(db), starts_at=datetime(2040, 6, 1, 10, tzinfo=UTC))
    db.execute(
        "update booking.bookings set updated_at = '2040-01-01 00:00+00',"
        " starts_at = starts_at + interval '1 hour' where id = %s",
        (booking,),
    )
    assert invitations(db, booking) == [("booking_confirmed", 0), ("booking_rescheduled", 1)]


def test_other_rows_carry_no_sequence(db: Conn) -> None:
    """Only invitation emails freeze one: SMS, in-app and reminders leave it null."""
    booking = make_booking(db, make_world(db))
    others = [
        r["ics_sequence"]
        for r in notifications(db, booking)
        if not (r["channel"] == "email" and r["kind"] in ICS_METHODS)
    ]
    assert others and set(others) == {None}
