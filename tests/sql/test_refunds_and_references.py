"""Refunds and booking references in SQL (CONTRACT.md §6): `payment_refunded` follows a
payment that is inserted as, or changed to, `refunded`; `pgnotify.booking_reference` is a
short, stable code read aloud safely; the rendering context carries both, and the totals
a cancellation states."""

from __future__ import annotations

import hashlib
import re
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest

from tests.factories import make_booking, make_payment, make_world, notifications

Conn = psycopg.Connection[Any]

EVENT_CHANNELS = ["email", "inapp", "sms"]
ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"


def refund_rows(db: Conn, booking: UUID) -> list[dict[str, Any]]:
    return [r for r in notifications(db, booking) if r["kind"] == "payment_refunded"]


def pay(db: Conn, booking: UUID, cents: int, status: str, currency: str = "EUR") -> UUID:
    """A payment row as an application inserts it; returns its id."""
    row = db.execute(
        "insert into booking.payments (booking_id, amount_cents, currency, status, provider)"
        " values (%s, %s, %s, %s, 'stripe') returning id",
        (booking, cents, currency, status),
    ).fetchone()
    assert row is not None
    return UUID(str(row[0]))


def context_of(db: Conn, booking: UUID, payment: UUID | None = None) -> dict[str, Any]:
    """The rendering context the daemon's claim reads for (booking, payment)."""
    row = db.execute(
        "select context from pgnotify.render_contexts(array[%s::uuid], array[%s::uuid])",
        (booking, payment),
    ).fetchone()
    assert row is not None
    context: dict[str, Any] = row[0]
    return context


# -- The refund lifecycle ---------------------------------------------------------------------


def test_a_payment_inserted_as_refunded_queues_a_refund_on_every_channel(db: Conn) -> None:
    """A partial refund recorded as its own row is announced, about that row."""
    booking = make_booking(db, make_world(db), status="pending")
    refund = pay(db, booking, 1000, "refunded")
    rows = refund_rows(db, booking)
    assert sorted(r["channel"] for r in rows) == EVENT_CHANNELS
    assert {(r["status"], r["payment_id"]) for r in rows} == {("pending", refund)}


def test_a_payment_changed_to_refunded_queues_one_refund_however_often_it_is_saved(
    db: Conn,
) -> None:
    """A full refund (the payment's status changes) is announced once: saving the row again,
    or changing another column of it, queues nothing new."""
    booking = make_booking(db, make_world(db), status="pending")
    payment = make_payment(db, booking, status="succeeded")
    assert refund_rows(db, booking) == []
    db.execute("update booking.payments set status = 'refunded' where id = %s", (payment,))
    db.execute("update booking.payments set status = 'refunded' where id = %s", (payment,))
    db.execute("update booking.payments set provider_ref = 're_1' where id = %s", (payment,))
    rows = refund_rows(db, booking)
    assert sorted(r["channel"] for r in rows) == EVENT_CHANNELS
    assert {r["payment_id"] for r in rows} == {payment}


@pytest.mark.parametrize("status", ["pending", "succeeded", "failed"])
def test_no_other_payment_status_queues_a_refund(db: Conn, status: str) -> None:
    booking = make_booking(db, make_world(db), status="pending")
    payment = pay(db, booking, 2500, "pending")
    db.execute("update booking.payments set status = %s where id = %s", (status, payment))
    pay(db, booking, 2500, status)
    assert refund_rows(db, booking) == []


def test_a_refund_follows_the_routing_rows_like_every_kind(db: Conn) -> None:
    world = make_world(db)
    db.execute(
        "insert into pgnotify.routes (shop_id, kind, channel, enabled)"
        " values (%s, 'payment_refunded', 'sms', false)",
        (world.shop_id,),
    )
    booking = make_booking(db, world, status="pending")
    pay(db, booking, 1000, "refunded")
    assert sorted(r["channel"] for r in refund_rows(db, booking)) == ["email", "inapp"]


def test_notify_booking_attaches_the_latest_payment_to_a_refund(db: Conn) -> None:
    """By hand too, a refund is about a payment; without one it is refused."""
    booking = make_booking(db, make_world(db), status="pending")
    with pytest.raises(psycopg.errors.NoDataFound, match="has no payment for payment_refunded"):
        db.execute("select pgnotify.notify_booking(%s, 'payment_refunded')", (booking,))
    refund = pay(db, booking, 1000, "refunded")
    db.execute("update pgnotify.notifications set status = 'cancelled'")  # the automatic ones
    (ids,) = db.execute(
        "select pgnotify.notify_booking(%s, 'payment_refunded', array['sms'])", (booking,)
    ).fetchone() or (None,)
    assert db.execute(
        "select kind, payment_id, status from pgnotify.notifications where id = any (%s)", (ids,)
    ).fetchall() == [("payment_refunded", refund, "pending")]


def test_the_payment_kinds_are_marked_in_the_catalog(db: Conn) -> None:
    """`notify_booking` reads which kinds need a payment from `pgnotify.kinds`."""
    marked = db.execute(
        "select array_agg(kind order by kind) from pgnotify.kinds where about_payment"
    ).fetchone()
    assert marked is not None
    assert {"payment_confirmed", "payment_failed", "payment_refunded"} <= set(marked[0])
    assert not {"booking_confirmed", "booking_cancelled", "reminder_24h"} & set(marked[0])


# -- The booking reference -------------------------------------------------------------------


def reference_of(booking_id: UUID) -> str:
    """The formula, computed independently: the first 40 bits of SHA-256 of the id's 16
    bytes, 5 bits per character of the alphabet."""
    head = int.from_bytes(hashlib.sha256(booking_id.bytes).digest()[:5], "big")
    return "".join(ALPHABET[(head >> shift) & 31] for shift in range(35, -5, -5))


def test_booking_reference_is_eight_unambiguous_characters_distinct_and_stable(
    db: Conn,
) -> None:
    """Over 5,000 ids: 8 characters of A-Z and 2-9 without I and O (no 0/O or 1/I), no two
    alike, the same on every call, and the documented formula."""
    ids = [uuid4() for _ in range(5000)]
    (first,) = db.execute(
        "select array_agg(pgnotify.booking_reference(id) order by n)"
        " from unnest(%s::uuid[]) with ordinality as u (id, n)",
        (ids,),
    ).fetchone() or (None,)
    (again,) = db.execute(
        "select array_agg(pgnotify.booking_reference(id) order by n)"
        " from unnest(%s::uuid[]) with ordinality as u (id, n)",
        (ids,),
    ).fetchone() or (None,)
    assert first == again
    assert all(re.fullmatch(r"[A-HJ-NP-Z2-9]{8}", ref) for ref in first)
    assert not set("".join(first)) & set("01IO")
    assert len(set(first)) == len(ids)
    assert first == [reference_of(i) for i in ids]


def test_time_ordered_ids_that_share_their_first_bytes_get_different_references(
    db: Conn,
) -> None:
    """Hashed, not cut from the id: ids that differ only in their last bytes (as v7 ids of
    one millisecond do) still get distinct references."""
    ids = [UUID(f"01890a5d-ac96-7000-8000-{n:012x}") for n in range(500)]
    (refs,) = db.execute(
        "select array_agg(pgnotify.booking_reference(id)) from unnest(%s::uuid[]) id", (ids,)
    ).fetchone() or (None,)
    assert len(set(refs)) == len(ids)


def test_booking_reference_of_null_is_null(db: Conn) -> None:
    assert db.execute("select pgnotify.booking_reference(null)").fetchone() == (None,)


# -- The rendering context -------------------------------------------------------------------


def test_the_context_carries_the_reference_and_what_was_paid_and_refunded(db: Conn) -> None:
    """Sums of succeeded and of refunded payments, per currency; pending and failed ones
    count for neither."""
    booking = make_booking(db, make_world(db), status="pending")
    assert context_of(db, booking)["booking"]["paid"] is None
    assert context_of(db, booking)["booking"]["refunded"] is None
    pay(db, booking, 2500, "succeeded")
    pay(db, booking, 500, "succeeded")
    pay(db, booking, 1000, "refunded")
    pay(db, booking, 700, "succeeded", currency="USD")
    # Other currencies, so that counting one of these shows as a key of its own.
    pay(db, booking, 9900, "failed", currency="GBP")
    pay(db, booking, 9900, "pending", currency="JPY")
    section = context_of(db, booking)["booking"]
    assert section["reference"] == reference_of(booking)
    assert section["paid"] == {"EUR": 3000, "USD": 700}
    assert section["refunded"] == {"EUR": 1000}


def test_the_context_carries_the_payments_dates(db: Conn) -> None:
    """The receipt shows when the payment reached its status (`updated_at`)."""
    booking = make_booking(db, make_world(db), status="pending")
    payment = pay(db, booking, 2500, "pending")
    db.execute(
        "update booking.payments set status = 'succeeded',"
        " updated_at = '2026-11-20 10:05:00+00' where id = %s",
        (payment,),
    )
    section = context_of(db, booking, payment)["payment"]
    assert section["updated_at"].startswith("2026-11-20T10:05:00")
    assert section["created_at"] and section["provider"] == "stripe"


def test_each_booking_of_a_claimed_batch_gets_its_own_totals(db: Conn) -> None:
    """The claim loads a whole batch at once: one booking's payments never show in another's
    context."""
    world = make_world(db)
    paid, unpaid = (make_booking(db, world, status="pending") for _ in range(2))
    pay(db, paid, 2500, "succeeded")
    rows = db.execute(
        "select booking_id, context from pgnotify.render_contexts(%s::uuid[], %s::uuid[])",
        ([paid, unpaid], [None, None]),
    ).fetchall()
    totals = {b: (c["booking"]["paid"], c["booking"]["refunded"]) for b, c in rows}
    assert totals == {paid: ({"EUR": 2500}, None), unpaid: (None, None)}
