"""Quiet hours (CONTRACT.md §7): reminder SMS never arrive in the night.

The rule itself, `pgnotify.quiet_slot`, takes the clock as a parameter, so its edges (the
evening before still in the future or not, the 30-minute floor, DST nights) are walked with
chosen instants; the triggers are then checked to apply it with the right zone and rows, on
scheduling and on rescheduling. Expected instants come from Python's zoneinfo, an
implementation independent of PostgreSQL's.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest

from tests.factories import World, make_booking, make_world

Conn = psycopg.Connection[Any]
MADRID = "Europe/Madrid"


def local(zone: str, day: date, hour: int, minute: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute), ZoneInfo(zone))


def slot(
    db: Conn,
    due: datetime,
    starts_at: datetime,
    now: datetime,
    *,
    zone: str = MADRID,
    quiet: tuple[str, str] = ("21:00", "08:00"),
) -> tuple[Any, ...]:
    row = db.execute(
        "select (s).run_at, (s).held_reason, (s).problem"
        " from pgnotify.quiet_slot(%s, %s, %s, %s::time, %s::time, %s) s",
        (due, starts_at, zone, *quiet, now),
    ).fetchone()
    assert row is not None
    return tuple(row)


def test_migrate_installs_the_default_of_21_to_8(quiet_hours: list[tuple[Any, ...]]) -> None:
    assert quiet_hours == [(None, time(21), time(8))]


def test_a_due_time_outside_quiet_hours_stays(db: Conn) -> None:
    day = date(2027, 5, 10)
    due, starts = local(MADRID, day, 8), local(MADRID, day, 10)
    assert slot(db, due, starts, now=local(MADRID, day, 0)) == (due, None, None)
    late = local(MADRID, day, 20, 59)
    assert slot(db, late, starts + timedelta(hours=11), now=local(MADRID, day, 0))[1] is None


def test_a_morning_reminder_moves_to_the_evening_before_while_that_is_ahead(db: Conn) -> None:
    day = date(2027, 5, 10)
    starts = local(MADRID, day, 8)
    due = starts - timedelta(hours=2)
    eve = local(MADRID, day - timedelta(days=1), 20, 59)
    assert slot(db, due, starts, now=eve - timedelta(seconds=1)) == (
        eve,
        "moved_before_quiet_hours",
        None,
    )


def test_an_evening_reminder_moves_to_just_before_quiet_hours_the_same_evening(db: Conn) -> None:
    day = date(2027, 5, 10)
    starts = local(MADRID, day + timedelta(days=1), 23)
    due = starts - timedelta(hours=24)
    assert slot(db, due, starts, now=local(MADRID, day, 9))[:2] == (
        local(MADRID, day, 20, 59),
        "moved_before_quiet_hours",
    )


@pytest.mark.parametrize(
    ("appointment", "expected"),
    [
        ((8, 30), "moved_to_end_of_quiet_hours"),  # the end is exactly 30 minutes before
        ((8, 29), "skipped_in_quiet_hours"),  # one minute short of the floor
        ((8, 0), "skipped_in_quiet_hours"),
    ],
)
def test_once_the_evening_is_past_the_end_counts_only_30_minutes_before_the_start(
    db: Conn, appointment: tuple[int, int], expected: str
) -> None:
    day = date(2027, 5, 10)
    starts = local(MADRID, day, *appointment)
    due = starts - timedelta(hours=2)
    run_at, reason, problem = slot(db, due, starts, now=local(MADRID, day - timedelta(days=1), 23))
    assert reason == expected
    if expected == "moved_to_end_of_quiet_hours":
        assert (run_at, problem) == (local(MADRID, day, 8), None)
    else:
        assert run_at == due and "quiet hours 21:00-08:00 (Europe/Madrid)" in problem


def test_a_window_within_one_day_and_an_empty_one(db: Conn) -> None:
    day = date(2027, 5, 10)
    starts = local(MADRID, day, 15)
    due = starts - timedelta(hours=2)
    now = local(MADRID, day, 0)
    assert slot(db, due, starts, now, quiet=("12:00", "14:00"))[:2] == (
        local(MADRID, day, 11, 59),
        "moved_before_quiet_hours",
    )
    assert slot(db, due, starts, now, quiet=("00:00", "00:00")) == (due, None, None)


# The nights the clocks change in 2027: spring forward, then fall back.
DST_NIGHTS = [
    (MADRID, date(2027, 3, 28)),
    (MADRID, date(2027, 10, 31)),
    ("America/New_York", date(2027, 3, 14)),
    ("America/New_York", date(2027, 11, 7)),
]


@pytest.mark.parametrize(("zone", "day"), DST_NIGHTS)
def test_dst_nights_move_to_the_local_evening_before_or_the_local_end(
    db: Conn, zone: str, day: date
) -> None:
    starts = local(zone, day, 9)
    due = starts - timedelta(hours=2)  # 2 real hours: 07:00 local whatever the night did
    eve = local(zone, day - timedelta(days=1), 20, 59)
    assert slot(db, due, starts, now=eve - timedelta(hours=1), zone=zone)[:2] == (
        eve,
        "moved_before_quiet_hours",
    )
    late = local(zone, day - timedelta(days=1), 22)
    run_at, reason, _ = slot(db, due, starts, now=late, zone=zone)
    assert (run_at, reason) == (local(zone, day, 8), "moved_to_end_of_quiet_hours")
    # The night is 9, 10 or 11 hours long, as the zone says: 21:00 to 08:00 local.
    # (Subtracting in UTC: Python subtracts wall clocks within one zone.)
    night = local(zone, day, 8).astimezone(UTC) - local(zone, day - timedelta(days=1), 21)
    assert run_at - eve - timedelta(minutes=1) == night
    assert night != timedelta(hours=11)


# -- Through the triggers ---------------------------------------------------------------------


def sms_reminder(db: Conn, booking: Any, kind: str = "reminder_2h") -> tuple[Any, ...]:
    row = db.execute(
        "select run_at, status, held_reason, last_error from pgnotify.notifications"
        " where booking_id = %s and kind = %s and channel = 'sms'",
        (booking, kind),
    ).fetchone()
    assert row is not None
    return tuple(row)


def future_day(days: int = 6) -> date:
    return datetime.now(UTC).date() + timedelta(days=days)


def test_reminders_are_held_in_the_customers_zone_else_the_shops(
    db: Conn, quiet_hours: object
) -> None:
    day = future_day()
    local_customer = make_world(db, timezone=MADRID)
    travelling = make_world(db, timezone=MADRID)
    db.execute(
        "update booking.customers set timezone = 'America/New_York' where id = %s",
        (travelling.customer_id,),
    )
    # 07:00 in New York is 13:00 in Madrid: the 2 h reminder is due at 05:00 for one
    # customer and 11:00 for the other.
    starts = local("America/New_York", day, 7)
    held = make_booking(db, travelling, starts_at=starts)
    free = make_booking(db, local_customer, starts_at=starts)
    assert sms_reminder(db, held)[:3] == (
        local("America/New_York", day - timedelta(days=1), 20, 59),
        "pending",
        "moved_before_quiet_hours",
    )
    assert sms_reminder(db, free)[:3] == (starts - timedelta(hours=2), "pending", None)


def test_only_reminder_sms_are_held_never_emails_confirmations_or_manual_calls(
    db: Conn, quiet_hours: object
) -> None:
    world = make_world(db, timezone="UTC")
    # Quiet hours for this shop around this very moment.
    db.execute(
        "insert into pgnotify.quiet_hours (shop_id, starts, ends) values"
        " (%s, (now() at time zone 'UTC' - interval '1 hour')::time,"
        "  (now() at time zone 'UTC' + interval '1 hour')::time)",
        (world.shop_id,),
    )
    booking = make_booking(db, world, starts_in=timedelta(hours=2, minutes=20))
    rows = db.execute(
        "select kind, channel, status, held_reason, run_at <= now() from pgnotify.notifications"
        " where booking_id = %s order by kind, channel",
        (booking,),
    ).fetchall()
    assert ("booking_confirmed", "sms", "pending", None, True) in rows
    # Its 2 h reminder, due in 20 minutes, falls in them; the evening is past and the end is
    # 1 h 20 before the start: moved to the end. The 24 h reminder is past: skipped as before.
    assert sms_reminder(db, booking)[1:3] == ("pending", "moved_to_end_of_quiet_hours")
    (manual,) = db.execute(
        "select pgnotify.notify_booking(%s, 'reminder_2h', array['sms'],"
        " now() + interval '20 minutes')",
        (booking,),
    ).fetchone() or (None,)
    assert db.execute(
        "select held_reason from pgnotify.notifications where id = any(%s)", (manual,)
    ).fetchall() == [(None,)]


def quiet_around_now(db: Conn, world: World, before: str, after: str) -> None:
    db.execute(
        "insert into pgnotify.quiet_hours (shop_id, starts, ends) values"
        " (%s, (now() at time zone 'UTC' - %s::interval)::time,"
        "  (now() at time zone 'UTC' + %s::interval)::time)",
        (world.shop_id, before, after),
    )


def test_a_shop_row_overrides_the_default_and_the_30_minute_floor_skips(
    db: Conn, quiet_hours: object
) -> None:
    world = make_world(db, timezone="UTC")
    quiet_around_now(db, world, "1 hour", "4 hours")
    moved = make_booking(db, world, starts_in=timedelta(hours=5))
    skipped = make_booking(db, world, starts_in=timedelta(hours=4, minutes=20))
    run_at, status, reason, _ = sms_reminder(db, moved)
    assert (status, reason) == ("pending", "moved_to_end_of_quiet_hours")
    # At the end of the shop's own quiet hours (the default would say 08:00 or 20:59).
    (ends,) = db.execute(
        "select ends from pgnotify.quiet_hours where shop_id = %s", (world.shop_id,)
    ).fetchone() or (None,)
    assert run_at.astimezone(UTC).time() == ends
    assert timedelta(hours=3, minutes=59) < run_at - datetime.now(UTC) <= timedelta(hours=4)
    _, status, reason, error = sms_reminder(db, skipped)
    assert (status, reason) == ("skipped", "skipped_in_quiet_hours")
    assert "less than 30 minutes before the appointment" in error


def test_rescheduling_evaluates_quiet_hours_again(db: Conn, quiet_hours: object) -> None:
    world = make_world(db, timezone=MADRID)
    day = future_day()
    booking = make_booking(db, world, starts_at=local(MADRID, day, 8))
    assert sms_reminder(db, booking)[2] == "moved_before_quiet_hours"
    db.execute(
        "update booking.bookings set starts_at = %s where id = %s",
        (local(MADRID, day, 12), booking),
    )
    assert sms_reminder(db, booking)[:3] == (local(MADRID, day, 10), "pending", None)
    db.execute(
        "update booking.bookings set starts_at = %s where id = %s",
        (local(MADRID, day, 9), booking),
    )
    assert sms_reminder(db, booking)[:3] == (
        local(MADRID, day - timedelta(days=1), 20, 59),
        "pending",
        "moved_before_quiet_hours",
    )
    # The 24 h reminder by email keeps its exact offset.
    (email_run_at,) = db.execute(
        "select run_at from pgnotify.notifications where booking_id = %s"
        " and kind = 'reminder_24h' and channel = 'email' and status = 'pending'",
        (booking,),
    ).fetchone() or (None,)
    assert email_run_at == local(MADRID, day, 9) - timedelta(hours=24)
    assert db.execute(
        "select kind, channel, held_reason, status, count from pgnotify.held_reminders"
    ).fetchall() == [("reminder_2h", "sms", "moved_before_quiet_hours", "pending", 1)]


def test_an_unknown_time_zone_falls_back_and_never_fails_the_insert(
    db: Conn, quiet_hours: object
) -> None:
    world = make_world(db, timezone="Not/AZone")
    db.execute(
        "update booking.customers set timezone = 'Mars/Olympus' where id = %s",
        (world.customer_id,),
    )
    day = future_day()
    booking = make_booking(db, world, starts_at=datetime.combine(day, time(8), UTC))
    assert sms_reminder(db, booking)[:3] == (
        datetime.combine(day - timedelta(days=1), time(20, 59), UTC),
        "pending",
        "moved_before_quiet_hours",
    )


@pytest.mark.parametrize("zone", ["UTC", "Pacific/Kiritimati", "Pacific/Pago_Pago"])
@pytest.mark.parametrize("starts_at", ["294276-12-31 23:30+00", "294276-12-31 05:00+00"])
def test_a_booking_at_the_end_of_time_never_fails_the_insert(
    db: Conn, quiet_hours: object, zone: str, starts_at: str
) -> None:
    """Local times near the last timestamp Postgres holds would overflow: quiet hours
    leave such a reminder alone instead of failing the application's INSERT or move."""
    world = make_world(db, timezone=zone)
    booking = make_booking(db, world)
    db.execute(
        "update booking.bookings set starts_at = %s::timestamptz where id = %s",
        (starts_at, booking),
    )
    inserted = db.execute(
        "insert into booking.bookings (shop_id, staff_id, service_id, customer_id,"
        " starts_at, duration_minutes, total_cents, status)"
        " values (%s, %s, %s, %s, %s::timestamptz, 45, 2500, 'confirmed') returning id",
        (world.shop_id, world.staff_id, world.service_id, world.customer_id, starts_at),
    ).fetchone()
    assert inserted is not None
    for moved_or_inserted in (booking, inserted[0]):
        assert db.execute(
            "select status, held_reason, run_at = %s::timestamptz - interval '2 hours'"
            " from pgnotify.notifications"
            " where booking_id = %s and kind = 'reminder_2h' and channel = 'sms'",
            (starts_at, moved_or_inserted),
        ).fetchall() == [("pending", None, True)]
