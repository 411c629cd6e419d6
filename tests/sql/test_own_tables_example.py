"""The README's worked example: an application's own table mirrored into the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg

from tests.factories import make_world

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "own_tables.sql"


def test_the_own_tables_example_drives_the_lifecycle(db: psycopg.Connection[Any]) -> None:
    db.execute("drop schema if exists app cascade")
    db.execute(EXAMPLE.read_text())  # type: ignore[call-overload]
    w = make_world(db)
    (appointment,) = db.execute(
        "insert into app.appointments (shop_id, barber_id, service_id, client_id, start_time,"
        " minutes, price, state) values (%s, %s, %s, %s, now() + interval '3 days', 30,"
        " 25.50, 'booked') returning id",
        (w.shop_id, w.staff_id, w.service_id, w.customer_id),
    ).fetchone() or (None,)
    kinds = {
        r[0]
        for r in db.execute(
            "select kind from pgnotify.notifications where booking_id = %s", (appointment,)
        )
    }
    assert kinds == {"booking_confirmed", "reminder_24h", "reminder_2h"}
    assert db.execute(
        "select total_cents from booking.bookings where id = %s", (appointment,)
    ).fetchone() == (2550,)

    db.execute("update app.appointments set state = 'cancelled' where id = %s", (appointment,))
    statuses = dict(
        db.execute(
            "select kind, max(status) from pgnotify.notifications where booking_id = %s"
            " group by kind",
            (appointment,),
        ).fetchall()
    )
    assert statuses["booking_cancelled"] == "pending"
    assert statuses["reminder_2h"] == "cancelled"
    db.execute("drop schema app cascade")
