"""The shop hears about its own bookings (CONTRACT.md §6), through a real daemon, the SMTP
peer and the Twilio-shaped peer: each alert reaches the shop's address (read when it is
sent) in the shop's language, with the customer's name and contacts, the service, the
staff, the time with its zone and the booking reference; the customer's own messages go
to the customer as before."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import psycopg

from tests.daemon.harness import smtp_settings, twilio_settings
from tests.daemon.test_customer_messages import (
    deliver_everything_due,
    emails_by_kind,
    parts,
    reference_of,
    sms_by_kind,
)
from tests.factories import World, make_booking, make_payment, make_world
from tests.peers.smtp import SmtpPeer
from tests.peers.twilio import TwilioPeer

Conn = psycopg.Connection[Any]
SHOP_KINDS = {"shop_booking_confirmed", "shop_booking_cancelled", "shop_payment_failed"}


def every_alert(db: Conn, world: World) -> UUID:
    """A booking confirmed, its payment failed, then cancelled: each alert's event."""
    booking = make_booking(db, world)
    db.execute("update booking.bookings set cancellation_reason = 'Ill' where id = %s", (booking,))
    make_payment(db, booking, status="failed")
    db.execute("update booking.bookings set status = 'cancelled' where id = %s", (booking,))
    return booking


def local_time(db: Conn, booking: UUID, zone: str) -> str:
    (starts_at,) = db.execute(
        "select starts_at from booking.bookings where id = %s", (booking,)
    ).fetchone() or (None,)
    assert isinstance(starts_at, datetime)
    return starts_at.astimezone(ZoneInfo(zone)).strftime("%H:%M %Z")


def local_range(db: Conn, booking: UUID, zone: str) -> str:
    """The appointment as emails show it: start–end, the zone once ("21:29–22:14 CET")."""
    (starts_at, minutes) = db.execute(
        "select starts_at, duration_minutes from booking.bookings where id = %s", (booking,)
    ).fetchone() or (None, None)
    assert isinstance(starts_at, datetime) and isinstance(minutes, int)
    start = starts_at.astimezone(ZoneInfo(zone))
    end = (starts_at + timedelta(minutes=minutes)).astimezone(ZoneInfo(zone))
    return f"{start:%H:%M}–{end:%H:%M %Z}"


async def test_each_alert_reaches_the_shop_in_its_language_and_the_customer_gets_hers(
    db: Conn, clean_db: str, tmp_path: Path, smtp_server: SmtpPeer
) -> None:
    """A Spanish shop, an English customer: three alerts to the shop's address, in
    Spanish, with what the shop needs to act (who, how to reach them, what, when, the
    reference), replies going to the customer; the customer's three emails reach her in
    English, as when the shop hears nothing."""
    world = make_world(
        db, shop_alerts=True, shop_locale="es", customer_locale="en", phone="+34600111222"
    )
    booking = every_alert(db, world)
    await deliver_everything_due(clean_db, tmp_path, **smtp_settings(smtp_server))

    emails = emails_by_kind(db, booking, smtp_server)
    assert set(emails) == SHOP_KINDS | {"booking_confirmed", "payment_failed", "booking_cancelled"}
    reference = reference_of(db, booking)
    when = local_range(db, booking, "Europe/Madrid")
    for kind in SHOP_KINDS:
        email = emails[kind]
        assert email["To"] == "Fade & Co <hello@fade.example>", kind
        assert email["Reply-To"] == "ana@example.com", kind
        assert "Ana Pérez" in str(email["Subject"]), kind
        text, html = parts(email)
        for shown in ("Ana Pérez", "ana@example.com", "+34600111222", "Skin fade", when):
            assert shown in text and shown in html, (kind, shown)
        assert "Con:        Luis" in text, kind
        assert f"Referencia de la reserva: {reference}" in text, kind
        assert f">{reference}</strong>" in html, kind
    assert str(emails["shop_booking_confirmed"]["Subject"]).startswith("Nueva reserva: Ana Pérez")
    assert "Motivo:     Ill" in parts(emails["shop_booking_cancelled"])[0]
    assert "el pago de 25,00 € de Ana Pérez" in parts(emails["shop_payment_failed"])[0]

    for kind in ("booking_confirmed", "payment_failed", "booking_cancelled"):
        assert emails[kind]["To"] == "Ana Pérez <ana@example.com>", kind
        assert emails[kind]["Reply-To"] == "hello@fade.example", kind
        assert f"Booking reference: {reference}" in parts(emails[kind])[0], kind
    assert str(emails["booking_confirmed"]["Subject"]).startswith("Confirmed: Skin fade")


async def test_a_shop_routed_to_sms_gets_its_alerts_on_its_phone(
    db: Conn, clean_db: str, tmp_path: Path, twilio_server: TwilioPeer
) -> None:
    """A shop row routes the alerts to `sms`: Twilio receives each at the shop's phone,
    short, with the customer's name and phone, the service and the time; the shop's
    missing email skips the email alerts with the reason instead of failing them."""
    world = make_world(db, shop_alerts=True, shop_email=None, email=None, with_user=False)
    db.execute("update booking.shops set phone = '+34911222333' where id = %s", (world.shop_id,))
    db.execute(
        "insert into pgnotify.routes (shop_id, kind, channel)"
        " select %s, kind, 'sms' from pgnotify.kinds where audience = 'shop'",
        (world.shop_id,),
    )
    booking = every_alert(db, world)
    await deliver_everything_due(clean_db, tmp_path, **twilio_settings(twilio_server))

    bodies = sms_by_kind(db, booking, twilio_server)
    assert set(bodies) >= SHOP_KINDS
    to_shop = {sms.body for sms in twilio_server.messages if sms.to == "+34911222333"}
    assert to_shop == {bodies[kind] for kind in SHOP_KINDS}
    when = local_time(db, booking, "Europe/Madrid")
    reference = reference_of(db, booking)
    for kind in SHOP_KINDS:
        for shown in ("Ana Pérez", "+34600111222", "Skin fade", when, f"Ref {reference}"):
            assert shown in bodies[kind], (kind, shown, bodies[kind])
        assert len(bodies[kind]) <= 160, bodies[kind]
    assert bodies["shop_booking_confirmed"].startswith("Fade & Co: new booking. Ana Pérez")
    assert "payment of €25.00 failed" in bodies["shop_payment_failed"]

    skipped = db.execute(
        "select kind, last_error from pgnotify.notifications"
        " where booking_id = %s and channel = 'email' and kind like 'shop%%'",
        (booking,),
    ).fetchall()
    assert sorted(skipped) == sorted((kind, "shop has no email address") for kind in SHOP_KINDS)


async def test_the_shops_address_is_read_when_the_alert_is_sent(
    db: Conn, clean_db: str, tmp_path: Path, smtp_server: SmtpPeer
) -> None:
    """Queued, then the shop changes its email (the alert goes to the new one) or removes
    it (the alert is skipped with the reason: never failed, never an error)."""
    moved, gone = make_world(db, shop_alerts=True), make_world(db, shop_alerts=True)
    to_new, to_none = make_booking(db, moved), make_booking(db, gone)
    db.execute(
        "update booking.shops set email = 'desk@fade.example' where id = %s", (moved.shop_id,)
    )
    db.execute("update booking.shops set email = null where id = %s", (gone.shop_id,))
    await deliver_everything_due(clean_db, tmp_path, **smtp_settings(smtp_server))

    def alert(booking: UUID) -> tuple[Any, ...] | None:
        return db.execute(
            "select status, recipient, last_error from pgnotify.notifications"
            " where booking_id = %s and kind = 'shop_booking_confirmed'",
            (booking,),
        ).fetchone()

    assert alert(to_new) == ("sent", "desk@fade.example", None)
    assert alert(to_none) == ("skipped", None, "shop has no email address")
    shop_mail = [m for m in smtp_server.messages if "fade.example" in m.rcpt_tos[0]]
    assert [m.rcpt_tos for m in shop_mail] == [("desk@fade.example",)]


async def test_a_customers_c_reaches_the_shop_as_an_alert(
    db: Conn, clean_db: str, tmp_path: Path, smtp_server: SmtpPeer
) -> None:
    """The customer replies C: the shop gets "attendance confirmed" by email, in its
    language, naming the customer's confirmation in the third person; the customer's own
    later emails say "you confirmed"."""
    world = make_world(db, shop_alerts=True, shop_locale="es")
    booking = make_booking(db, world, starts_in=timedelta(days=2))
    db.execute(
        "insert into pgnotify.inbound_messages (from_address, body, provider_id)"
        " values ('+34 600 111 222', ' c ', 'SM-c') on conflict do nothing"
    )
    await deliver_everything_due(clean_db, tmp_path, **smtp_settings(smtp_server))

    alert = emails_by_kind(db, booking, smtp_server)["shop_customer_confirmed"]
    assert alert["To"] == "Fade & Co <hello@fade.example>"
    assert str(alert["Subject"]).startswith("Confirmada: Ana Pérez vendrá a")
    text, html = parts(alert)
    for part in (text, html):
        assert "El cliente ha confirmado su asistencia (respondió C)." in part
        assert local_range(db, booking, "Europe/Madrid") in part
