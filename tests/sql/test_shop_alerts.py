"""The shop's alerts in SQL terms (CONTRACT.md §6): the row changes that queue a customer's
confirmation, cancellation or failed-payment message queue the shop's alert beside it,
addressed to the shop, routed like every other kind."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import psycopg
import pytest

from tests.factories import World, make_booking, make_payment, make_world, notifications

Conn = psycopg.Connection[Any]
SHOP_EMAIL = "hello@fade.example"


def alerts(db: Conn, booking: UUID) -> list[tuple[Any, ...]]:
    """(kind, channel, status, recipient, customer_id, payment_id, last_error) of the
    booking's alerts to the shop, in the order they were queued."""
    columns = ("kind", "channel", "status", "recipient", "customer_id", "payment_id", "last_error")
    return [
        tuple(r[c] for c in columns)
        for r in notifications(db, booking)
        if r["kind"].startswith("shop_")
    ]


def shop_world(db: Conn, **fields: Any) -> World:
    return make_world(db, shop_alerts=True, **fields)


def test_the_shop_kinds_are_rows_of_the_catalog_addressed_to_the_shop(db: Conn) -> None:
    """One INSERT per kind and per route: each alert but the customer's C (queued by the
    reply trigger) follows a customer kind, goes to the shop, by email only unless a row
    says otherwise."""
    assert db.execute(
        "select kind, audience, same_event_as, about_payment from pgnotify.kinds"
        " where audience = 'shop' or same_event_as is not null order by kind"
    ).fetchall() == [
        ("shop_booking_cancelled", "shop", "booking_cancelled", False),
        ("shop_booking_confirmed", "shop", "booking_confirmed", False),
        ("shop_customer_confirmed", "shop", None, False),
        ("shop_payment_failed", "shop", "payment_failed", True),
    ]
    assert db.execute(
        "select kind, channel, enabled from pgnotify.routes"
        " where shop_id is null and kind like 'shop%%' order by kind"
    ).fetchall() == [
        ("shop_booking_cancelled", "email", True),
        ("shop_booking_confirmed", "email", True),
        ("shop_customer_confirmed", "email", True),
        ("shop_payment_failed", "email", True),
    ]


@pytest.mark.parametrize("inserted_as", ["confirmed", "pending"])
def test_a_confirmation_queues_the_shops_alert_to_its_email(db: Conn, inserted_as: str) -> None:
    """Inserted as, or changed to, `confirmed`: one alert, to the shop's address, with no
    customer (the shop is not a customer: no opt-out, no inbox of theirs applies)."""
    booking = make_booking(db, shop_world(db), status=inserted_as)
    if inserted_as == "pending":
        assert alerts(db, booking) == []
        db.execute("update booking.bookings set status = 'confirmed' where id = %s", (booking,))
    assert alerts(db, booking) == [
        ("shop_booking_confirmed", "email", "pending", SHOP_EMAIL, None, None, None)
    ]
    # The same change again (or a change of nothing that matters) queues nothing new.
    db.execute("update booking.bookings set status = 'confirmed' where id = %s", (booking,))
    db.execute("update booking.bookings set cancellation_reason = 'x' where id = %s", (booking,))
    assert len(alerts(db, booking)) == 1


def test_cancelling_a_confirmed_booking_alerts_the_shop_and_does_not_cancel_the_alert(
    db: Conn,
) -> None:
    """The cancellation stops the customer's reminders, never the shop's alerts: both the
    confirmation's and the cancellation's stay pending; a pending booking's cancellation
    alerts nobody."""
    world = shop_world(db)
    booking = make_booking(db, world)
    db.execute("update booking.bookings set status = 'cancelled' where id = %s", (booking,))
    assert [a[:3] for a in alerts(db, booking)] == [
        ("shop_booking_confirmed", "email", "pending"),
        ("shop_booking_cancelled", "email", "pending"),
    ]
    reminders = {r["status"] for r in notifications(db, booking) if r["kind"].startswith("rem")}
    assert reminders == {"cancelled"}

    never_confirmed = make_booking(db, world, status="pending")
    db.execute("update booking.bookings set status = 'cancelled' where id = %s", (never_confirmed,))
    assert alerts(db, never_confirmed) == []


@pytest.mark.parametrize("inserted_as", ["failed", "pending"])
def test_a_failed_payment_alerts_the_shop_about_that_payment(db: Conn, inserted_as: str) -> None:
    booking = make_booking(db, shop_world(db), status="pending")
    payment = make_payment(db, booking, status=inserted_as)
    if inserted_as == "pending":
        assert alerts(db, booking) == []
        db.execute("update booking.payments set status = 'failed' where id = %s", (payment,))
    assert alerts(db, booking) == [
        ("shop_payment_failed", "email", "pending", SHOP_EMAIL, None, payment, None)
    ]
    db.execute("update booking.payments set status = 'failed' where id = %s", (payment,))
    make_payment(db, booking, status="succeeded")
    assert len(alerts(db, booking)) == 1, "a success or a repeated failure alerts nobody"


def test_a_shop_route_row_switches_an_alert_off_or_sends_it_to_the_shops_phone(
    db: Conn,
) -> None:
    """`enabled = false` for one shop and one alert mutes it for that shop only; a row with
    `sms` sends that alert to the shop's phone too."""
    muted, texted = shop_world(db), shop_world(db)
    db.execute("update booking.shops set phone = '+34911222333' where id = %s", (texted.shop_id,))
    db.execute(
        "insert into pgnotify.routes (shop_id, kind, channel, enabled) values"
        " (%s, 'shop_booking_confirmed', 'email', false),"
        " (%s, 'shop_booking_confirmed', 'sms', true)",
        (muted.shop_id, texted.shop_id),
    )
    quiet = make_booking(db, muted)
    assert alerts(db, quiet) == []
    assert {r["kind"] for r in notifications(db, quiet)} >= {"booking_confirmed"}
    loud = make_booking(db, texted)
    assert sorted(a[:4] for a in alerts(db, loud)) == [
        ("shop_booking_confirmed", "email", "pending", SHOP_EMAIL),
        ("shop_booking_confirmed", "sms", "pending", "+34911222333"),
    ]


@pytest.mark.parametrize(
    ("shop_email", "reason"),
    [(None, "shop has no email address"), ("not-an-email", "shop email is not a valid address")],
)
def test_a_shop_without_a_usable_email_gets_its_alert_skipped_with_the_reason(
    db: Conn, shop_email: str | None, reason: str
) -> None:
    """Skipped, never failed, and the customer's messages are queued as ever."""
    booking = make_booking(db, shop_world(db, shop_email=shop_email))
    assert alerts(db, booking) == [
        ("shop_booking_confirmed", "email", "skipped", shop_email, None, None, reason)
    ]
    customer = {(r["kind"], r["channel"], r["status"]) for r in notifications(db, booking)}
    assert ("booking_confirmed", "email", "pending") in customer


def test_the_customers_opt_out_does_not_apply_to_the_shops_alert(db: Conn) -> None:
    world = shop_world(db)
    db.execute(
        "insert into pgnotify.opt_outs (customer_id, channel) values (%s, 'email')",
        (world.customer_id,),
    )
    booking = make_booking(db, world)
    statuses = {
        r["kind"]: r["status"] for r in notifications(db, booking) if r["channel"] == "email"
    }
    assert statuses["booking_confirmed"] == "skipped"
    assert statuses["shop_booking_confirmed"] == "pending"


def test_a_manual_notification_queues_only_the_kind_it_names(db: Conn) -> None:
    """Re-sending the customer's confirmation by hand does not alert the shop again; an
    alert can be queued by hand like any kind (a shop has no in-app inbox: skipped)."""
    booking = make_booking(db, shop_world(db), status="pending")
    db.execute("select pgnotify.notify_booking(%s, 'booking_confirmed')", (booking,))
    assert alerts(db, booking) == []
    db.execute(
        "select pgnotify.notify_booking(%s, 'shop_booking_confirmed', array['email', 'inapp'])",
        (booking,),
    )
    assert sorted((a[1], a[2], a[6]) for a in alerts(db, booking)) == [
        ("email", "pending", None),
        ("inapp", "skipped", "shop has no user_id for in-app messages"),
    ]
