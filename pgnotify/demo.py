"""``pgnotify demo``: one shop, customer, confirmed booking and payment, for a first look.

The rows go through the public booking model only, exactly as an application would
write them: every notification that follows comes from the triggers.
"""

from __future__ import annotations

from typing import Any

import psycopg

DEMO = """
with shop as (
    insert into booking.shops (name, timezone, email, phone, address, locale)
    values ('Demo Barbers', 'Europe/Madrid', 'hello@demo-barbers.example', '+34910000000',
            'Calle Mayor 1, 28013 Madrid', 'en')
    returning id
), staff as (
    insert into booking.staff (shop_id, name) select id, 'Luis' from shop returning id
), service as (
    insert into booking.services (shop_id, name, duration_minutes, price_cents, currency)
    select id, 'Skin fade', 45, 2500, 'EUR' from shop returning id
), customer as (
    insert into booking.customers (name, email, phone, user_id, locale)
    values ('Ana Pérez', 'ana@example.com', '+34600111222', gen_random_uuid(), 'en')
    returning id
)
select shop.id, staff.id, service.id, customer.id from shop, staff, service, customer
"""

FAST_RULES = """
insert into pgnotify.reminder_rules (shop_id, kind, before_start)
values (%(shop)s, 'reminder_24h', interval '24 seconds'),
       (%(shop)s, 'reminder_2h', interval '2 seconds')
"""

BOOKING = """
insert into booking.bookings (shop_id, staff_id, service_id, customer_id, starts_at,
                              duration_minutes, total_cents, currency, status)
values (%(shop)s, %(staff)s, %(service)s, %(customer)s,
        date_trunc('second', now()) + %(ahead)s::interval, 45, 2500, 'EUR', 'confirmed')
returning id, starts_at
"""

PAYMENT = """
insert into booking.payments (booking_id, amount_cents, currency, status, provider, provider_ref)
values (%s, 2500, 'EUR', 'succeeded', 'stripe', 'pi_demo')
"""


def insert_demo(conn: psycopg.Connection[Any], *, fast: bool = False) -> str:
    """Insert the demo rows in one transaction; returns a summary to print."""
    with conn.transaction():
        ids = conn.execute(DEMO).fetchone()
        assert ids is not None
        params = dict(zip(("shop", "staff", "service", "customer"), ids, strict=True))
        if fast:
            # Seconds instead of hours, for this demo shop only: 25 s ahead, reminders at
            # 24 s and 2 s before, so the whole story plays out in under a minute.
            conn.execute(FAST_RULES, params)
        params["ahead"] = "25 seconds" if fast else "25 hours"
        booking = conn.execute(BOOKING, params).fetchone()
        assert booking is not None
        conn.execute(PAYMENT, (booking[0],))
    when = "in 25 seconds (--fast)" if fast else "in 25 hours"
    return (
        f"demo booking {booking[0]} for Ana Pérez at Demo Barbers, {when}\n"
        "queued: booking_confirmed and payment_confirmed (email, sms, inapp) now; "
        "reminder_24h (email, sms) and reminder_2h (sms) before the appointment\n"
        "watch: pgnotify status   (and the outbox directory when SMTP/Twilio are unset)"
    )
