"""One row's data never fails the application's statement nor stops another row
(CONTRACT.md §5, issue 12).

Infinite and extreme timestamps, odd session time zones, nulls and very long text go in
through the booking model as an application writes them. Every statement succeeds; the
rows that cannot be shown or claimed end ``skipped`` or ``failed`` with the reason, and a
real daemon goes on sending every other row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest

from tests.daemon.harness import count_reaches, make_settings, running, smtp_settings
from tests.factories import (
    daemon_connection,
    make_booking,
    make_payment,
    make_world,
    take_due,
)
from tests.peers.smtp import SmtpPeer

Conn = psycopg.Connection[Any]

# The extremes a timestamptz column accepts, and two ordinary-looking times near them.
END_OF_TIME = "294276-12-31 23:00+00"
EXTREME_TIMES = [
    "infinity",
    "-infinity",
    END_OF_TIME,
    "294276-12-31 23:59:59.999999+00",
    "4714-11-24 00:00:00+00 BC",
    "9999-12-31 23:59:59+00",
    "0001-01-01 00:00+00",
]
# Session time zones an application may run with: far east and west, half hours, POSIX.
ODD_ZONES = ["Pacific/Kiritimati", "Etc/GMT+12", "<+0545>-5:45"]
UNSHOWABLE = "outside the years 1 to 9999 that messages can show"


def booking_at(
    db: Conn,
    world: Any,
    starts_at: str,
    *,
    status: str = "confirmed",
    duration: int = 120,
    updated_at: str | None = None,
) -> UUID:
    """A booking inserted as the application would, with the times given as text."""
    row = db.execute(
        "insert into booking.bookings (shop_id, staff_id, service_id, customer_id, starts_at,"
        " duration_minutes, total_cents, status, updated_at)"
        " values (%s, %s, %s, %s, %s::timestamptz, %s, 2500, %s,"
        " coalesce(%s::timestamptz, now())) returning id",
        (
            world.shop_id,
            world.staff_id,
            world.service_id,
            world.customer_id,
            starts_at,
            duration,
            status,
            updated_at,
        ),
    ).fetchone()
    assert row is not None
    return UUID(str(row[0]))


def queue_of(db: Conn, booking: UUID) -> list[tuple[str, str, str, str | None]]:
    return db.execute(
        "select kind, channel, status, last_error from pgnotify.notifications"
        " where booking_id = %s order by kind, channel",
        (booking,),
    ).fetchall()


def assert_queue_is_sane(db: Conn) -> None:
    """No row without its key, and nothing pending at a time that never comes."""
    assert db.execute(
        "select count(*) from pgnotify.notifications where occurrence is null"
        " or (status = 'pending' and not isfinite(run_at))"
    ).fetchone() == (0,)


@pytest.mark.parametrize("zone", ["UTC", *ODD_ZONES])
@pytest.mark.parametrize("moment", EXTREME_TIMES)
def test_extreme_times_never_fail_the_applications_statements(
    db: Conn, moment: str, zone: str
) -> None:
    """Inserting, confirming, moving, cancelling and paying for a booking at any time the
    column accepts succeeds, as does any ``updated_at``, in any session time zone."""
    db.execute("select set_config('timezone', %s, false)", (zone,))
    world = make_world(db)
    confirmed = booking_at(db, world, moment)
    booking_at(db, world, "2030-01-01 10:00+00", updated_at=moment)
    later = booking_at(db, world, moment, status="pending", updated_at=moment)
    db.execute("update booking.bookings set status = 'confirmed' where id = %s", (later,))
    moved = make_booking(db, world)
    db.execute(
        "update booking.bookings set starts_at = %s::timestamptz where id = %s", (moment, moved)
    )
    db.execute(
        "update booking.bookings set starts_at = now() + interval '5 days',"
        " updated_at = %s::timestamptz where id = %s",
        (moment, moved),
    )
    db.execute("update booking.bookings set status = 'cancelled' where id = %s", (confirmed,))
    payment = make_payment(db, moved)
    db.execute(
        "update booking.payments set status = 'failed', updated_at = %s::timestamptz where id = %s",
        (moment, payment),
    )
    assert_queue_is_sane(db)
    assert ("booking_confirmed", "email") in {(k, c) for k, c, *_ in queue_of(db, confirmed)}


def test_a_manual_notification_due_at_infinity_is_skipped_with_the_reason(db: Conn) -> None:
    """Pending at infinity it would never go, and the scheduler's next wake-up, computed
    from the earliest due time, would fail for every shop."""
    booking = make_booking(db, make_world(db), status="pending")
    db.execute(
        "select pgnotify.notify_booking(%s, 'booking_confirmed', array['email'], 'infinity')",
        (booking,),
    )
    assert queue_of(db, booking) == [
        ("booking_confirmed", "email", "skipped", "due time infinity is not a finite time")
    ]


def test_reminders_of_a_booking_at_the_dawn_of_time_are_skipped_as_past(db: Conn) -> None:
    """``starts_at - 24 hours`` is before the lowest timestamp: the reminder is past."""
    booking = booking_at(db, make_world(db), "4714-11-24 01:00+00 BC")
    reminders = [r for r in queue_of(db, booking) if r[0].startswith("reminder")]
    assert {r[2] for r in reminders} == {"skipped"}
    assert {r[3] for r in reminders} == {"reminder due time already past when it was scheduled"}


def test_a_booking_that_never_starts_has_no_reminders_and_its_old_ones_stop(db: Conn) -> None:
    world = make_world(db)
    never = booking_at(db, world, "infinity")
    assert not [r for r in queue_of(db, never) if r[0].startswith("reminder")]
    moved = make_booking(db, world)
    db.execute("update booking.bookings set starts_at = 'infinity' where id = %s", (moved,))
    reminders = [r for r in queue_of(db, moved) if r[0].startswith("reminder")]
    assert reminders and {r[2] for r in reminders} == {"cancelled"}


async def test_the_claim_of_a_batch_never_fails_on_a_booking_at_the_end_of_time(
    db: Conn, clean_db: str
) -> None:
    """Its end time (start plus duration) is past the last timestamp: the claim used to
    compute it and fail for the whole batch. Now it claims every row and names the reason
    the end-of-time booking's rows are not sent."""
    world = make_world(db)
    doomed = booking_at(db, world, END_OF_TIME, duration=120)
    normal = make_booking(db, world)
    async with daemon_connection(clean_db) as conn:
        claimed = await take_due(conn, "poison-test")
    reasons = {(r["booking_id"], r["channel"]): r["stale_reason"] for r in claimed}
    for channel in ("email", "sms", "inapp"):
        assert reasons[(normal, channel)] is None
        assert UNSHOWABLE in (reasons[(doomed, channel)] or "")


async def test_rows_that_cannot_be_shown_are_skipped_and_every_other_row_is_sent(
    db: Conn, clean_db: str, tmp_path: Path, smtp_server: SmtpPeer
) -> None:
    """A booking at the end of time (whose end overflows), one that never starts, one in
    4714 BC and one with an infinite version are claimed first and skipped with the
    reason; the ordinary booking queued after them, in a shop with a zone that does not
    exist and a customer with very long text, still gets every message."""
    world = make_world(db)
    poison = [
        booking_at(db, world, END_OF_TIME),
        booking_at(db, world, "infinity"),
        booking_at(db, world, "4714-11-24 00:00+00 BC"),
        booking_at(db, world, "9999-12-31 12:00+00"),
    ]
    versioned = booking_at(db, world, "2030-01-01 10:00+00", updated_at="infinity")
    db.execute(
        "update booking.shops set timezone = 'Mars/Olympus_Mons' where id = %s", (world.shop_id,)
    )
    normal_world = make_world(db, timezone="Not/A_Zone", customer_name="N" * 20_000)
    db.execute(
        "update booking.customers set locale = %s, timezone = 'x' where id = %s",
        ("z" * 5_000, normal_world.customer_id),
    )
    normal = make_booking(db, normal_world)

    settings = make_settings(clean_db, tmp_path, **smtp_settings(smtp_server))
    async with running(settings):
        await count_reaches(
            clean_db,
            3,
            f"booking_id = '{normal}' and kind = 'booking_confirmed' and status = 'sent'",
        )
        await count_reaches(
            clean_db,
            3,
            f"booking_id = '{versioned}' and kind = 'booking_confirmed' and status = 'sent'",
        )
        await count_reaches(clean_db, 0, "run_at <= now() and status in ('pending', 'sending')")

    for booking in poison:
        confirmations = [r for r in queue_of(db, booking) if r[0] == "booking_confirmed"]
        assert len(confirmations) == 3, confirmations
        for _, channel, status, reason in confirmations:
            assert status == "skipped", (booking, channel, status, reason)
            assert reason is not None and UNSHOWABLE in reason
    assert_queue_is_sane(db)
    assert len(smtp_server.messages) == 2


@pytest.mark.parametrize("channel", ["email", "inapp"])
async def test_a_row_that_fails_the_claim_fails_alone_with_the_error(
    db: Conn, clean_db: str, tmp_path: Path, smtp_server: SmtpPeer, channel: str
) -> None:
    """The claims compute nothing one row can overflow, but should a data error escape
    one anyway the worker takes the rows one by one and fails the guilty one. Provoked
    here with an attempt counter at the integer limit (the claim, and the in-app lock,
    count the attempt): that row, first in order, becomes a dead letter with the error;
    the rows after it are all sent."""
    world = make_world(db)
    poisoned = make_booking(db, world, status="pending")
    db.execute(
        "select pgnotify.notify_booking(%s, 'booking_confirmed', array[%s],"
        " now() - interval '1 hour')",
        (poisoned, channel),
    )
    db.execute("update pgnotify.notifications set attempts = 2147483647")
    others = [make_booking(db, make_world(db)) for _ in range(4)]

    settings = make_settings(
        clean_db, tmp_path, **smtp_settings(smtp_server), NOTIFICATION_BATCH_SIZE=5
    )
    async with running(settings):
        await count_reaches(clean_db, 12, "kind = 'booking_confirmed' and status = 'sent'")
        await count_reaches(clean_db, 1, "status = 'failed'")

    ((booking_id, reason),) = db.execute(
        "select booking_id, last_error from pgnotify.notifications where status = 'failed'"
    ).fetchall()
    assert booking_id == poisoned
    assert reason.startswith("cannot be claimed: ")
    assert "integer out of range" in reason
    assert len(smtp_server.messages) == len(others)
