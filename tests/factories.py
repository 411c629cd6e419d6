"""Rows of the reference booking model, inserted with psycopg as an application would."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import psycopg


@dataclass(frozen=True)
class World:
    """A shop with one staff member, one service and one customer."""

    shop_id: UUID
    staff_id: UUID
    service_id: UUID
    customer_id: UUID
    user_id: UUID | None


def make_world(
    conn: psycopg.Connection[Any],
    *,
    shop_name: str = "Fade & Co",
    timezone: str = "Europe/Madrid",
    shop_email: str | None = "hello@fade.example",
    address: str | None = "Calle Mayor 1, Madrid",
    shop_locale: str = "en",
    customer_name: str = "Ana Pérez",
    email: str | None = "ana@example.com",
    phone: str | None = "+34600111222",
    with_user: bool = True,
    customer_locale: str | None = None,
    staff_name: str = "Luis",
    service_name: str = "Skin fade",
) -> World:
    shop_id, staff_id, service_id, customer_id = uuid4(), uuid4(), uuid4(), uuid4()
    user_id = uuid4() if with_user else None
    conn.execute(
        "insert into booking.shops (id, name, timezone, email, address, locale)"
        " values (%s, %s, %s, %s, %s, %s)",
        (shop_id, shop_name, timezone, shop_email, address, shop_locale),
    )
    conn.execute(
        "insert into booking.staff (id, shop_id, name) values (%s, %s, %s)",
        (staff_id, shop_id, staff_name),
    )
    conn.execute(
        "insert into booking.services (id, shop_id, name, duration_minutes, price_cents,"
        " currency) values (%s, %s, %s, 45, 2500, 'EUR')",
        (service_id, shop_id, service_name),
    )
    conn.execute(
        "insert into booking.customers (id, name, email, phone, user_id, locale)"
        " values (%s, %s, %s, %s, %s, %s)",
        (customer_id, customer_name, email, phone, user_id, customer_locale),
    )
    return World(shop_id, staff_id, service_id, customer_id, user_id)


def make_booking(
    conn: psycopg.Connection[Any],
    world: World,
    *,
    starts_in: timedelta | None = timedelta(days=3),
    starts_at: datetime | None = None,
    status: str = "confirmed",
) -> UUID:
    booking_id = uuid4()
    if starts_at is None:
        assert starts_in is not None
        conn.execute(
            "insert into booking.bookings (id, shop_id, staff_id, service_id, customer_id,"
            " starts_at, duration_minutes, total_cents, currency, status)"
            " values (%s, %s, %s, %s, %s, date_trunc('second', now()) + %s, 45, 2500,"
            " 'EUR', %s)",
            (
                booking_id,
                world.shop_id,
                world.staff_id,
                world.service_id,
                world.customer_id,
                starts_in,
                status,
            ),
        )
    else:
        conn.execute(
            "insert into booking.bookings (id, shop_id, staff_id, service_id, customer_id,"
            " starts_at, duration_minutes, total_cents, currency, status)"
            " values (%s, %s, %s, %s, %s, %s, 45, 2500, 'EUR', %s)",
            (
                booking_id,
                world.shop_id,
                world.staff_id,
                world.service_id,
                world.customer_id,
                starts_at,
                status,
            ),
        )
    return booking_id


def make_payment(
    conn: psycopg.Connection[Any], booking_id: UUID, *, status: str = "succeeded"
) -> UUID:
    payment_id = uuid4()
    conn.execute(
        "insert into booking.payments (id, booking_id, amount_cents, currency, status,"
        " provider, provider_ref) values (%s, %s, 2500, 'EUR', %s, 'stripe', 'pi_123')",
        (payment_id, booking_id, status),
    )
    return payment_id


def notifications(
    conn: psycopg.Connection[Any], booking_id: UUID | None = None
) -> list[dict[str, Any]]:
    """The queue rows (of one booking), oldest first, as dicts."""
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        if booking_id is None:
            cur.execute("select * from pgnotify.notifications order by id")
        else:
            cur.execute(
                "select * from pgnotify.notifications where booking_id = %s order by id",
                (booking_id,),
            )
        return cur.fetchall()


def kinds(rows: list[dict[str, Any]], status: str | None = None) -> set[tuple[str, str]]:
    """The (kind, channel) pairs of rows, optionally only those in ``status``."""
    return {(r["kind"], r["channel"]) for r in rows if status is None or r["status"] == status}
