"""Rows of the reference booking model, inserted with psycopg as an application would."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import psycopg

from pgnotify import queries
from pgnotify.channels.base import InappMessage
from pgnotify.db import as_url, init_connection
from pgnotify.inbox import finish_inapp
from pgnotify.outcome import Outcome
from pgnotify.worker import to_claimed


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
    shop_alerts: bool = False,
) -> World:
    """The rows of a small world. The shop's own alerts (`shop_*` kinds) are switched off
    for it, as an operator does it (a `pgnotify.routes` row per alert, `enabled = false`),
    unless ``shop_alerts``: most tests are about what the customer gets, and those of the
    alerts (tests/sql/test_shop_alerts.py, tests/daemon/test_shop_alerts.py) turn them on.
    """
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
    if not shop_alerts:
        mute_shop_alerts(conn, shop_id)
    return World(shop_id, staff_id, service_id, customer_id, user_id)


def mute_shop_alerts(conn: psycopg.Connection[Any], shop_id: UUID) -> None:
    """Switch off every alert to the shop on every channel it is routed to by default."""
    conn.execute(
        "insert into pgnotify.routes (shop_id, kind, channel, enabled)"
        " select %s, r.kind, r.channel, false from pgnotify.routes r"
        " join pgnotify.kinds k on k.kind = r.kind"
        " where r.shop_id is null and k.audience = 'shop'",
        (shop_id,),
    )


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


def lone_notification(
    conn: psycopg.Connection[Any],
    *,
    kind: str = "booking_confirmed",
    channel: str = "email",
    world: World | None = None,
    **world_fields: Any,
) -> int:
    """One queue row and nothing else: queued by hand for a booking still `pending`.

    A pending booking causes no notification of its own, so claims and purges in the test
    see exactly this row (plus any other the test makes).
    """
    world = world or make_world(conn, **world_fields)
    booking_id = make_booking(conn, world, status="pending")
    row = conn.execute(
        "select pgnotify.notify_booking(%s, %s, array[%s])", (booking_id, kind, channel)
    ).fetchone()
    assert row is not None and len(row[0]) == 1
    return int(row[0][0])


@asynccontextmanager
async def daemon_connection(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """An asyncpg connection set up as the daemon sets up its pool's connections."""
    conn = await asyncpg.connect(as_url(dsn), server_settings={"timezone": "UTC"})
    try:
        await init_connection(conn)
        yield conn
    finally:
        await conn.close()


async def claim(
    conn: asyncpg.Connection, daemon_id: str, *, lease: float = 60.0, limit: int = 100
) -> list[asyncpg.Record]:
    """Run the daemon's claim (`queries.CLAIM_DUE`) as daemon ``daemon_id``."""
    return list(await conn.fetch(queries.CLAIM_DUE, limit, daemon_id, lease, []))


async def take_due(
    conn: asyncpg.Connection, daemon_id: str, *, limit: int = 100
) -> list[asyncpg.Record]:
    """Every due row as the daemon's claims return it: email and SMS claimed under a lease
    (`claim`), in-app rows as the in-app lock reads them (outside a transaction, the lock
    ends with its statement)."""
    leased = await claim(conn, daemon_id, limit=limit)
    return [*leased, *await conn.fetch(queries.lock_inapp(limit))]


async def deliver_inapp(
    conn: asyncpg.Connection, daemon_id: str, *, title: str = "Title", body: str = "Body"
) -> list[int]:
    """Lock and deliver the due in-app rows as the worker does, in one transaction
    (`queries.lock_inapp`, then `pgnotify.inbox.finish_inapp`, each row sent with
    ``title`` and ``body``). Returns the ids the finish wrote."""
    async with conn.transaction():
        batch = to_claimed(await conn.fetch(queries.lock_inapp(100)))
        outcomes = [Outcome(n.id, "sent") for n in batch]
        messages = {n.id: InappMessage(n.id, title, body) for n in batch}
        written = await finish_inapp(conn, daemon_id, batch, outcomes, messages)
    return sorted(written)


async def record(
    conn: asyncpg.Connection,
    daemon_id: str,
    ids: list[int],
    status: str,
    *,
    delay: float | None = None,
    last_error: str | None = None,
    provider_id: str | None = None,
    release: bool = False,
) -> list[int]:
    """Record one outcome for ``ids`` as daemon ``daemon_id`` (`queries.RECORD_OUTCOMES`).

    Returns the ids the statement changed.
    """
    n = len(ids)
    rows = await conn.fetch(
        queries.RECORD_OUTCOMES,
        ids,
        [status] * n,
        [delay] * n,
        [last_error] * n,
        [provider_id] * n,
        [release] * n,
        daemon_id,
    )
    return sorted(int(r["id"]) for r in rows)
