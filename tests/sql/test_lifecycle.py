"""Every rule of CONTRACT.md §2, in SQL terms: rows change, notifications follow."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg
import pytest

from tests.factories import kinds, make_booking, make_payment, make_world, notifications

EVENT_CHANNELS = {"email", "sms", "inapp"}
Conn = psycopg.Connection[Any]


def by_kind(rows: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["kind"] == kind]


def each(rows: list[dict[str, Any]], status: str | None = None) -> list[tuple[str, str]]:
    """The sorted (kind, channel) of every row (in ``status``): duplicates stay visible."""
    return sorted(
        (r["kind"], r["channel"]) for r in rows if status is None or r["status"] == status
    )


def per_channel(*kinds_: str) -> list[tuple[str, str]]:
    """One row of each kind on each event channel, as ``each`` lists them."""
    return sorted((kind, channel) for kind in kinds_ for channel in EVENT_CHANNELS)


def test_confirmed_booking_queues_confirmation_and_both_reminders(db: Conn) -> None:
    world = make_world(db)
    booking = make_booking(db, world, starts_in=timedelta(days=3))
    rows = notifications(db, booking)
    assert (
        each(rows)
        == each(rows, "pending")
        == [
            ("booking_confirmed", "email"),
            ("booking_confirmed", "inapp"),
            ("booking_confirmed", "sms"),
            ("reminder_24h", "email"),
            ("reminder_24h", "sms"),
            ("reminder_2h", "sms"),
        ]
    )
    recipients = {r["channel"]: r["recipient"] for r in by_kind(rows, "booking_confirmed")}
    assert recipients == {
        "email": "ana@example.com",
        "sms": "+34600111222",
        "inapp": str(world.user_id),
    }


def test_reminders_are_due_at_their_exact_offsets(db: Conn) -> None:
    """One row per reminder and channel, each due exactly its offset before the start."""
    world = make_world(db)
    booking = make_booking(db, world, starts_in=timedelta(days=2, hours=5, seconds=17))
    (starts_at,) = db.execute(
        "select starts_at from booking.bookings where id = %s", (booking,)
    ).fetchone() or (None,)
    reminders = sorted(
        (r["kind"], r["channel"], r["status"], r["run_at"])
        for r in notifications(db, booking)
        if r["kind"].startswith("reminder")
    )
    assert reminders == [
        ("reminder_24h", "email", "pending", starts_at - timedelta(hours=24)),
        ("reminder_24h", "sms", "pending", starts_at - timedelta(hours=24)),
        ("reminder_2h", "sms", "pending", starts_at - timedelta(hours=2)),
    ]


def test_pending_booking_queues_nothing_until_confirmed(db: Conn) -> None:
    world = make_world(db)
    booking = make_booking(db, world, status="pending")
    assert notifications(db, booking) == []
    db.execute("update booking.bookings set status = 'confirmed' where id = %s", (booking,))
    assert ("booking_confirmed", "email") in kinds(notifications(db, booking), "pending")
    assert ("reminder_2h", "sms") in kinds(notifications(db, booking), "pending")


def test_an_identical_update_causes_nothing(db: Conn) -> None:
    world = make_world(db)
    booking = make_booking(db, world)
    before = notifications(db, booking)
    for _ in range(3):
        db.execute(
            "update booking.bookings set status = 'confirmed', starts_at = starts_at where id = %s",
            (booking,),
        )
    db.execute(
        "update booking.bookings set total_cents = total_cents + 1 where id = %s", (booking,)
    )
    assert notifications(db, booking) == before


def test_payment_succeeded_and_failed_notify(db: Conn) -> None:
    """Exactly one row per channel for each payment outcome, none for a pending payment."""
    world = make_world(db)
    booking = make_booking(db, world)
    paid = make_payment(db, booking, status="succeeded")
    rows = [r for r in notifications(db, booking) if r["payment_id"] == paid]
    assert each(rows) == each(rows, "pending") == per_channel("payment_confirmed")

    other = make_payment(db, booking, status="pending")
    assert [r for r in notifications(db, booking) if r["payment_id"] == other] == []
    db.execute("update booking.payments set status = 'failed' where id = %s", (other,))
    db.execute(
        "update booking.payments set failure_reason = 'card declined' where id = %s", (other,)
    )
    rows = [r for r in notifications(db, booking) if r["payment_id"] == other]
    assert each(rows) == each(rows, "pending") == per_channel("payment_failed")


def test_payment_failed_then_succeeded_sends_both(db: Conn) -> None:
    """A retried payment notifies its failure and its success, once per channel each."""
    world = make_world(db)
    booking = make_booking(db, world)
    payment = make_payment(db, booking, status="failed")
    db.execute("update booking.payments set status = 'succeeded' where id = %s", (payment,))
    rows = [r for r in notifications(db, booking) if r["payment_id"] == payment]
    assert each(rows) == each(rows, "pending") == per_channel("payment_failed", "payment_confirmed")


def test_cancelling_a_booking_cancels_its_pending_reminders(db: Conn) -> None:
    world = make_world(db)
    booking = make_booking(db, world)
    db.execute(
        "update booking.bookings set status = 'cancelled', cancellation_reason = 'ill'"
        " where id = %s",
        (booking,),
    )
    rows = notifications(db, booking)
    assert each(rows, "pending") == per_channel("booking_confirmed", "booking_cancelled")
    reminders = [r for r in rows if r["kind"].startswith("reminder")]
    assert len(reminders) == 3
    assert all(r["status"] == "cancelled" for r in reminders)
    assert all(r["last_error"] == "booking is now cancelled" for r in reminders)


def test_cancelling_a_pending_booking_sends_nothing(db: Conn) -> None:
    world = make_world(db)
    booking = make_booking(db, world, status="pending")
    db.execute("update booking.bookings set status = 'cancelled' where id = %s", (booking,))
    assert notifications(db, booking) == []


def test_completing_a_booking_cancels_reminders_without_a_message(db: Conn) -> None:
    world = make_world(db)
    booking = make_booking(db, world)
    db.execute("update booking.bookings set status = 'completed' where id = %s", (booking,))
    rows = notifications(db, booking)
    assert {r["kind"] for r in rows} == {"booking_confirmed", "reminder_24h", "reminder_2h"}
    assert all(r["status"] == "cancelled" for r in rows if r["kind"].startswith("reminder"))


def test_cancel_then_reconfirm_queues_everything_again(db: Conn) -> None:
    world = make_world(db)
    booking = make_booking(db, world)
    db.execute("update booking.bookings set status = 'cancelled' where id = %s", (booking,))
    db.execute("update booking.bookings set status = 'confirmed' where id = %s", (booking,))
    rows = notifications(db, booking)
    assert len(by_kind(rows, "booking_confirmed")) == 6
    pending = kinds(rows, "pending")
    assert {("reminder_24h", "email"), ("reminder_24h", "sms"), ("reminder_2h", "sms")} <= pending


def test_rescheduling_moves_reminders_and_notifies(db: Conn) -> None:
    world = make_world(db)
    booking = make_booking(db, world, starts_in=timedelta(days=3))
    db.execute(
        "update booking.bookings set starts_at = starts_at + interval '1 day' where id = %s",
        (booking,),
    )
    (starts_at,) = db.execute(
        "select starts_at from booking.bookings where id = %s", (booking,)
    ).fetchone() or (None,)
    rows = notifications(db, booking)
    assert kinds(rows, "pending") >= {("booking_rescheduled", c) for c in EVENT_CHANNELS}
    reminders = [r for r in rows if r["kind"].startswith("reminder")]
    assert len(reminders) == 3, "reminders are moved, not duplicated"
    for r in reminders:
        offset = timedelta(hours=24 if r["kind"] == "reminder_24h" else 2)
        assert r["status"] == "pending"
        assert r["run_at"] == starts_at - offset


def test_rescheduling_inside_24h_skips_the_24h_reminder_and_moves_the_2h(db: Conn) -> None:
    world = make_world(db)
    booking = make_booking(db, world, starts_in=timedelta(days=3))
    db.execute(
        "update booking.bookings set starts_at = now() + interval '10 hours' where id = %s",
        (booking,),
    )
    rows = notifications(db, booking)
    r24 = by_kind(rows, "reminder_24h")
    assert {r["status"] for r in r24} == {"skipped"}
    assert all("past" in r["last_error"] for r in r24)
    (r2,) = by_kind(rows, "reminder_2h")
    assert r2["status"] == "pending"

    # ...and back beyond 24 h: the 24 h reminder is due again, once per channel.
    db.execute(
        "update booking.bookings set starts_at = now() + interval '3 days' where id = %s",
        (booking,),
    )
    rows = notifications(db, booking)
    assert len([r for r in by_kind(rows, "reminder_24h") if r["status"] == "pending"]) == 2
    assert len([r for r in by_kind(rows, "reminder_2h") if r["status"] == "pending"]) == 1


def test_reminders_already_past_are_never_queued_as_pending(db: Conn) -> None:
    world = make_world(db)
    booking = make_booking(db, world, starts_in=timedelta(hours=1))
    rows = notifications(db, booking)
    reminders = [r for r in rows if r["kind"].startswith("reminder")]
    assert reminders and all(r["status"] == "skipped" for r in reminders)
    assert kinds(rows, "pending") == {("booking_confirmed", c) for c in EVENT_CHANNELS}


@pytest.mark.parametrize(
    ("field", "value", "channel", "reason"),
    [
        ("email", None, "email", "customer has no email address"),
        ("email", "not-an-email", "email", "customer email is not a valid address"),
        ("email", "a@b.c\r\nBcc: x@evil.example", "email", "customer email is not a valid address"),
        ("phone", None, "sms", "customer has no phone number"),
        ("phone", "600 111 222", "sms", "customer phone is not in E.164 format"),
    ],
)
def test_a_channel_without_a_usable_recipient_is_skipped_with_the_reason(
    db: Conn, field: str, value: str | None, channel: str, reason: str
) -> None:
    world = make_world(db, **{field: value})  # type: ignore[arg-type]
    booking = make_booking(db, world)
    rows = [r for r in notifications(db, booking) if r["channel"] == channel]
    assert rows and all(r["status"] == "skipped" for r in rows)
    assert all(r["last_error"].startswith(reason) for r in rows)
    others = [r for r in notifications(db, booking) if r["channel"] != channel]
    assert all(r["status"] == "pending" for r in others)


def test_no_user_id_skips_inapp(db: Conn) -> None:
    world = make_world(db, with_user=False)
    booking = make_booking(db, world)
    (row,) = [r for r in notifications(db, booking) if r["channel"] == "inapp"]
    assert row["status"] == "skipped"
    assert row["last_error"] == "customer has no user_id for in-app messages"


def test_an_opted_out_channel_is_skipped(db: Conn) -> None:
    world = make_world(db)
    db.execute(
        "insert into pgnotify.opt_outs (customer_id, channel, reason) values (%s, 'sms', 'STOP')",
        (world.customer_id,),
    )
    booking = make_booking(db, world)
    sms = [r for r in notifications(db, booking) if r["channel"] == "sms"]
    assert len(sms) == 3
    assert all(r["status"] == "skipped" for r in sms)
    assert all(r["last_error"] == "customer opted out of sms (STOP)" for r in sms)


def test_routing_is_data_and_a_shop_can_override_it(db: Conn) -> None:
    world = make_world(db)
    other = make_world(db, shop_name="Other")
    db.execute(
        "insert into pgnotify.routes (shop_id, kind, channel, enabled)"
        " values (%s, 'booking_confirmed', 'sms', false), (%s, 'reminder_2h', 'email', true)",
        (world.shop_id, world.shop_id),
    )
    rows = notifications(db, make_booking(db, world))
    assert ("booking_confirmed", "sms") not in kinds(rows)
    assert ("reminder_2h", "email") in kinds(rows, "pending")
    rows = notifications(db, make_booking(db, other))
    assert ("booking_confirmed", "sms") in kinds(rows, "pending")
    assert ("reminder_2h", "email") not in kinds(rows)

    db.execute(
        "update pgnotify.routes set enabled = false where shop_id is null"
        " and kind = 'booking_confirmed' and channel = 'inapp'"
    )
    assert ("booking_confirmed", "inapp") not in kinds(notifications(db, make_booking(db, other)))


def test_reminder_offsets_are_data_and_a_shop_can_override_them(db: Conn) -> None:
    world = make_world(db)
    db.execute(
        "insert into pgnotify.reminder_rules (shop_id, kind, before_start)"
        " values (%s, 'reminder_24h', interval '48 hours')",
        (world.shop_id,),
    )
    db.execute(
        "update pgnotify.reminder_rules set enabled = false"
        " where shop_id is null and kind = 'reminder_2h'"
    )
    booking = make_booking(db, world, starts_in=timedelta(days=5))
    (starts_at,) = db.execute(
        "select starts_at from booking.bookings where id = %s", (booking,)
    ).fetchone() or (None,)
    rows = notifications(db, booking)
    assert by_kind(rows, "reminder_2h") == []
    assert {r["run_at"] for r in by_kind(rows, "reminder_24h")} == {starts_at - timedelta(hours=48)}


def test_the_dedupe_key_makes_a_duplicate_occurrence_impossible(db: Conn) -> None:
    world = make_world(db)
    booking = make_booking(db, world)
    with pytest.raises(psycopg.errors.UniqueViolation):
        db.execute(
            "insert into pgnotify.notifications (kind, channel, booking_id, occurrence)"
            " select kind, channel, booking_id, occurrence from pgnotify.notifications"
            " where booking_id = %s and kind = 'booking_confirmed' and channel = 'email'",
            (booking,),
        )


def test_a_five_thousand_booking_insert_queues_all_and_notifies_once(
    db: Conn, clean_db: str
) -> None:
    world = make_world(db)
    with psycopg.connect(clean_db, autocommit=True) as listener:
        listener.execute("listen pgnotify")
        with db.transaction():
            db.execute(
                "insert into booking.bookings (shop_id, staff_id, service_id, customer_id,"
                " starts_at, duration_minutes, total_cents, status)"
                " select %s, %s, %s, %s, now() + interval '3 days' + g * interval '1 minute',"
                " 30, 1000, 'confirmed' from generate_series(1, 5000) g",
                (world.shop_id, world.staff_id, world.service_id, world.customer_id),
            )
        received = list(listener.notifies(timeout=1.0))
    (count,) = db.execute(
        "select count(*) from pgnotify.notifications where status = 'pending'"
    ).fetchone() or (0,)
    assert count == 5000 * 6
    assert len(received) == 1
    assert received[0].channel == "pgnotify"


def test_requeueing_a_row_wakes_listeners(db: Conn, clean_db: str) -> None:
    world = make_world(db)
    booking = make_booking(db, world)
    db.execute(
        "update pgnotify.notifications set status = 'failed', last_error = 'x'"
        " where booking_id = %s and channel = 'email' and kind = 'booking_confirmed'",
        (booking,),
    )
    with psycopg.connect(clean_db, autocommit=True) as listener:
        listener.execute("listen pgnotify")
        (row_id,) = db.execute(
            "select id from pgnotify.notifications where status = 'failed'"
        ).fetchone() or (None,)
        assert db.execute("select pgnotify.retry(%s)", (row_id,)).fetchone() == (True,)
        assert len(list(listener.notifies(timeout=1.0))) == 1
        # Claiming (pending -> sending) is not news for anyone: no wake-up.
        db.execute(
            "update pgnotify.notifications set status = 'sending',"
            " lease_until = now() + interval '1 minute' where id = %s",
            (row_id,),
        )
        assert list(listener.notifies(timeout=0.3)) == []
