"""Any value the booking model accepts, in every column, never fails the application's
statement and never stops another booking's notifications (CONTRACT.md §5).

Hypothesis fills every column of shops, staff, services, customers, bookings and payments
with what their types and checks allow (infinite and extreme times, nulls, odd zones,
long and strange text), INSERTs and then UPDATEs them as an application would, in an odd
session time zone. Every statement must succeed. Then an ordinary booking is made, and
the daemon's claim and composer run over everything due: the claim must not fail, and
the ordinary booking's messages must compose; every other row composes or ends with a
named reason, never an unforeseen error.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgnotify.compose import Composer
from pgnotify.errors import DeliveryError, TransientError
from pgnotify.templates import TemplateRenderer
from pgnotify.worker import to_claimed
from tests.daemon.harness import make_settings
from tests.factories import daemon_connection, make_booking, make_world, take_due

Conn = psycopg.Connection[Any]

INT4 = 2**31 - 1
EXTREME_TIMES = [
    "infinity",
    "-infinity",
    "294276-12-31 23:59:59.999999+00",
    "294276-12-31 23:00+00",
    "4714-11-24 00:00:00+00 BC",
    "9999-12-31 23:59:59+00",
    "0001-01-01 00:00+00",
]
LONG = ["x" * 20_000, "é" * 5_000, "😀" * 2_000]
ZONES = ["UTC", "Pacific/Kiritimati", "Etc/GMT+12", "America/St_Johns", "<+0545>-5:45"]

texts = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40),
    st.sampled_from(LONG),
)
maybe_texts = st.none() | texts
times = st.one_of(
    st.sampled_from(EXTREME_TIMES),
    st.datetimes(timezones=st.just(UTC)).map(datetime.isoformat),
)
positive = st.integers(1, INT4)
cents = st.integers(0, INT4)
currencies = st.from_regex(r"[A-Z]{3}", fullmatch=True)
booking_status = st.sampled_from(["pending", "confirmed", "cancelled", "completed", "no_show"])
payment_status = st.sampled_from(["pending", "succeeded", "failed", "refunded"])

shops = st.fixed_dictionaries(
    {
        "name": texts,
        "timezone": st.one_of(st.sampled_from(ZONES), texts),
        "email": maybe_texts,
        "phone": maybe_texts,
        "address": maybe_texts,
        "locale": texts,
    }
)
customers = st.fixed_dictionaries(
    {
        "name": texts,
        "email": st.one_of(st.none(), st.emails(), texts),
        "phone": st.one_of(st.none(), st.from_regex(r"\+[1-9][0-9]{6,14}", fullmatch=True), texts),
        "user_id": st.none() | st.uuids(),
        "locale": maybe_texts,
        "timezone": st.one_of(st.none(), st.sampled_from(ZONES), texts),
    }
)
bookings = st.fixed_dictionaries(
    {
        "starts_at": times,
        "duration_minutes": positive,
        "total_cents": cents,
        "currency": currencies,
        "status": booking_status,
        "cancellation_reason": maybe_texts,
        "created_at": times,
        "updated_at": times,
    }
)
payments = st.fixed_dictionaries(
    {
        "amount_cents": cents,
        "currency": currencies,
        "status": payment_status,
        "provider": maybe_texts,
        "provider_ref": maybe_texts,
        "failure_reason": maybe_texts,
        "created_at": times,
        "updated_at": times,
    }
)


def insert(db: Conn, table: str, values: dict[str, Any]) -> Any:
    """INSERT one row (times given as text, cast by the server) and return its id."""
    columns = ", ".join(values)
    placeholders = ", ".join(
        "%s::timestamptz" if c in ("starts_at", "created_at", "updated_at") else "%s"
        for c in values
    )
    row = db.execute(
        f"insert into booking.{table} ({columns}) values ({placeholders}) returning id",
        list(values.values()),
    ).fetchone()
    assert row is not None
    return row[0]


def update(db: Conn, table: str, row_id: Any, values: dict[str, Any]) -> None:
    assignments = ", ".join(
        f"{c} = %s::timestamptz" if c in ("starts_at", "created_at", "updated_at") else f"{c} = %s"
        for c in values
    )
    db.execute(
        f"update booking.{table} set {assignments} where id = %s", [*values.values(), row_id]
    )


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
@given(
    zone=st.sampled_from(ZONES),
    shop=shops,
    staff_name=texts,
    service=st.fixed_dictionaries(
        {"name": texts, "duration_minutes": positive, "price_cents": cents, "currency": currencies}
    ),
    customer=customers,
    booking=bookings,
    booking_change=bookings,
    payment=payments,
    payment_change=payments,
)
async def test_any_booking_model_values_succeed_and_other_bookings_still_deliver(
    db: Conn,
    clean_db: str,
    tmp_path: Path,
    zone: str,
    shop: dict[str, Any],
    staff_name: str,
    service: dict[str, Any],
    customer: dict[str, Any],
    booking: dict[str, Any],
    booking_change: dict[str, Any],
    payment: dict[str, Any],
    payment_change: dict[str, Any],
) -> None:
    db.execute("delete from pgnotify.notifications")
    db.execute("select set_config('timezone', %s, false)", (zone,))
    # The application's statements: every one must succeed.
    shop_id = insert(db, "shops", shop)
    staff_id = insert(db, "staff", {"shop_id": shop_id, "name": staff_name})
    service_id = insert(db, "services", {"shop_id": shop_id, **service})
    customer_id = insert(db, "customers", customer)
    ids = {
        "shop_id": shop_id,
        "staff_id": staff_id,
        "service_id": service_id,
        "customer_id": customer_id,
    }
    booking_id = insert(db, "bookings", {**ids, **booking})
    payment_id = insert(db, "payments", {"booking_id": booking_id, **payment})
    update(db, "bookings", booking_id, booking_change)
    update(db, "payments", payment_id, payment_change)
    assert db.execute(
        "select count(*) from pgnotify.notifications where status = 'pending'"
        " and not isfinite(run_at)"
    ).fetchone() == (0,)

    # An ordinary booking after them: the claim takes it and it composes on every channel.
    db.execute("set timezone = 'UTC'")
    normal = make_booking(db, make_world(db))
    async with daemon_connection(clean_db) as conn:
        claimed = to_claimed(await take_due(conn, "fuzz", limit=1000))
    settings_ = make_settings(clean_db, tmp_path)
    composer = Composer(settings_, TemplateRenderer.from_settings(settings_))
    composed = composer.compose_batch(claimed)
    ours = [(n, m) for n, m in zip(claimed, composed, strict=True) if n.booking_id == normal]
    assert sorted(n.channel for n, _ in ours) == ["email", "inapp", "sms"]
    for n, message in ours:
        assert not isinstance(message, DeliveryError), (n.channel, message)
    for n, message in zip(claimed, composed, strict=True):
        # Nothing unforeseen: a message, or a skip or permanent failure with its reason.
        assert not isinstance(message, TransientError), (n.kind, n.channel, message)
