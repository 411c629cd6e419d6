"""Random sequences of booking changes never break the queue's invariants."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.factories import make_booking, make_world

Conn = psycopg.Connection[Any]

STATUSES = ["pending", "confirmed", "cancelled", "completed", "no_show"]
change = st.one_of(
    st.tuples(st.just("status"), st.sampled_from(STATUSES)),
    # hours from now: some inside 2 h, some inside 24 h, some beyond
    st.tuples(st.just("starts_in_hours"), st.sampled_from([1, 3, 10, 23, 25, 48, 72])),
    st.tuples(st.just("noop"), st.just(None)),
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    initial=st.sampled_from(STATUSES),
    starts_in_hours=st.sampled_from([1, 5, 30, 72]),
    changes=st.lists(change, max_size=8),
)
def test_random_changes_keep_the_queue_invariants(
    db: Conn, initial: str, starts_in_hours: int, changes: list[tuple[str, Any]]
) -> None:
    world = make_world(db)
    booking = make_booking(db, world, status=initial, starts_in=timedelta(hours=starts_in_hours))
    for what, value in changes:
        if what == "status":
            db.execute("update booking.bookings set status = %s where id = %s", (value, booking))
        elif what == "starts_in_hours":
            db.execute(
                "update booking.bookings set starts_at = now() + %s where id = %s",
                (timedelta(hours=value), booking),
            )
        else:
            db.execute("update booking.bookings set status = status where id = %s", (booking,))

        # Never a pending reminder for a booking that is not confirmed.
        (bad,) = db.execute(
            "select count(*) from pgnotify.notifications n join booking.bookings b"
            " on b.id = n.booking_id where n.booking_id = %s and n.status = 'pending'"
            " and n.kind like 'reminder%%' and b.status <> 'confirmed'",
            (booking,),
        ).fetchone() or (0,)
        assert bad == 0
        # Never a pending reminder that was already past when it was scheduled, and every
        # pending reminder points at the booking's current time.
        (bad,) = db.execute(
            "select count(*) from pgnotify.notifications n join booking.bookings b"
            " on b.id = n.booking_id where n.booking_id = %s and n.status = 'pending'"
            " and n.kind like 'reminder%%'"
            " and (n.run_at <= n.updated_at or n.occurrence <> pgnotify.starts_key(b.starts_at))",
            (booking,),
        ).fetchone() or (0,)
        assert bad == 0
        # Never two live rows with one dedupe key (the index guarantees it; check anyway).
        (dupes,) = db.execute(
            "select count(*) from (select 1 from pgnotify.notifications"
            " where status <> 'cancelled' group by coalesce(payment_id, booking_id), kind,"
            " channel, occurrence having count(*) > 1) d"
        ).fetchone() or (0,)
        assert dupes == 0
        # A confirmed booking due beyond 2 h has exactly one pending 2 h reminder.
        (status, future) = db.execute(
            "select status, starts_at - interval '2 hours' > now() from booking.bookings"
            " where id = %s",
            (booking,),
        ).fetchone() or (None, None)
        (r2,) = db.execute(
            "select count(*) from pgnotify.notifications where booking_id = %s"
            " and kind = 'reminder_2h' and status = 'pending'",
            (booking,),
        ).fetchone() or (0,)
        assert r2 == (1 if status == "confirmed" and future else 0)
