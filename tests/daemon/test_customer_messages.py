"""What the customer reads, through a real daemon, the SMTP peer and the Twilio-shaped peer
(CONTRACT.md §6): refunds state their amount, cancellations what was paid and refunded,
every booking email its reference, the receipt its date and provider, and the SMS say
STOP, never CANCEL, the time and address, arrive on time, the reminders "Reply C to
confirm" (CONTRACT.md §7), in at most two segments."""

from __future__ import annotations

import re
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import psycopg
import pytest

from pgnotify.segments import count_segments, fold_to_gsm7
from tests.daemon.harness import (
    count_reaches,
    make_settings,
    running,
    smtp_settings,
    twilio_settings,
)
from tests.factories import World, make_booking, make_world
from tests.peers.smtp import SmtpPeer
from tests.peers.twilio import TwilioPeer

Conn = psycopg.Connection[Any]

# Every kind a customer gets about their own booking (the shop's alerts are not theirs).
CUSTOMER_KINDS = {
    "booking_confirmed",
    "booking_rescheduled",
    "booking_cancelled",
    "payment_confirmed",
    "payment_failed",
    "payment_refunded",
    "reminder_24h",
    "reminder_2h",
}
# Queued by hand (due now) on one channel; the others follow from the rows the test writes.
BY_HAND = ("booking_rescheduled", "booking_cancelled", "reminder_24h", "reminder_2h")


def pay(
    db: Conn,
    booking: UUID,
    cents: int,
    status: str,
    *,
    updated_at: str | None = None,
    currency: str = "EUR",
) -> UUID:
    """A payment row as an application inserts it (provider `stripe`); returns its id."""
    row = db.execute(
        "insert into booking.payments (booking_id, amount_cents, currency, status, provider,"
        " provider_ref, updated_at) values (%s, %s, %s, %s, 'stripe', 'pi_77',"
        " coalesce(%s::timestamptz, now())) returning id",
        (booking, cents, currency, status, updated_at),
    ).fetchone()
    assert row is not None
    return UUID(str(row[0]))


def every_customer_kind(db: Conn, world: World, channel: str) -> UUID:
    """A confirmed booking with every customer kind due now on ``channel``: its payments
    (succeeded 25.00, refunded 10.00, failed 25.00, in that order) by the triggers, the rest
    by hand. Returns the booking."""
    booking = make_booking(db, world)
    db.execute(
        "update booking.bookings set cancellation_reason = %s where id = %s",
        ("Staff illness" if channel == "sms" else "Closed for repairs", booking),
    )
    pay(db, booking, 2500, "succeeded", updated_at="2026-11-20 10:05:00+00")
    pay(db, booking, 1000, "refunded")
    pay(db, booking, 2500, "failed")
    for kind in BY_HAND:
        db.execute("select pgnotify.notify_booking(%s, %s, array[%s])", (booking, kind, channel))
    return booking


async def deliver_everything_due(clean_db: str, tmp_path: Path, **peers: Any) -> None:
    """Run a daemon until nothing due is left to send."""
    async with running(make_settings(clean_db, tmp_path, **peers)):
        await count_reaches(
            clean_db, 0, "status in ('pending', 'sending') and run_at <= now()", timeout=30
        )


def sent(db: Conn, booking: UUID, channel: str) -> dict[str, str]:
    """provider_id -> kind of the booking's sent rows on ``channel``."""
    rows = db.execute(
        "select provider_id, kind from pgnotify.notifications"
        " where booking_id = %s and channel = %s and status = 'sent'",
        (booking, channel),
    ).fetchall()
    return {str(provider_id): str(kind) for provider_id, kind in rows}


def emails_by_kind(db: Conn, booking: UUID, smtp: SmtpPeer) -> dict[str, EmailMessage]:
    kinds = sent(db, booking, "email")
    out = {}
    for received in smtp.messages:
        message = received.parsed()
        kind = kinds.get(str(message["Message-ID"]))
        if kind:
            assert kind not in out, f"two emails of {kind}"
            out[kind] = message
    return out


def sms_by_kind(db: Conn, booking: UUID, twilio: TwilioPeer) -> dict[str, str]:
    kinds = sent(db, booking, "sms")
    out = {}
    for sms in twilio.messages:
        if sms.sid in kinds:
            assert kinds[sms.sid] not in out, f"two SMS of {kinds[sms.sid]}"
            out[kinds[sms.sid]] = sms.body
    return out


def inbox_by_kind(db: Conn, user_id: UUID | None) -> dict[str, str]:
    rows = db.execute(
        "select kind, title || ' / ' || body from pgnotify.inbox where user_id = %s", (user_id,)
    ).fetchall()
    return {str(kind): str(text) for kind, text in rows}


def parts(message: EmailMessage) -> tuple[str, str]:
    """The decoded text and HTML bodies, line breaks as LF (MIME text carries CRLF)."""
    text, html = message.get_body(("plain",)), message.get_body(("html",))
    assert text is not None and html is not None
    return _lf(text.get_content()), _lf(html.get_content())


def _lf(content: object) -> str:
    return str(content).replace("\r\n", "\n")


def reference_of(db: Conn, booking: UUID) -> str:
    row = db.execute("select pgnotify.booking_reference(%s)", (booking,)).fetchone()
    assert row is not None and re.fullmatch(r"[A-HJ-NP-Z2-9]{8}", row[0])
    return str(row[0])


async def test_a_refund_states_its_amount_by_email_sms_and_inapp(
    db: Conn, clean_db: str, tmp_path: Path, smtp_server: SmtpPeer, twilio_server: TwilioPeer
) -> None:
    """A payment changed to `refunded` (a full refund) reaches the customer on every
    channel with the amount given back, which is neither the price nor another payment's."""
    world = make_world(db)
    booking = make_booking(db, world, status="pending")  # 25.00: the price must not pass
    payment = pay(db, booking, 1850, "succeeded")
    db.execute("update booking.payments set status = 'refunded' where id = %s", (payment,))
    await deliver_everything_due(
        clean_db, tmp_path, **smtp_settings(smtp_server), **twilio_settings(twilio_server)
    )
    email = emails_by_kind(db, booking, smtp_server)["payment_refunded"]
    text, html = parts(email)
    assert "€18.50" in str(email["Subject"])
    assert "we've refunded €18.50" in text and "€18.50" in html
    assert "Provider:   stripe" in text
    assert (
        "refunded €18.50 for your Skin fade"
        in sms_by_kind(db, booking, twilio_server)["payment_refunded"]
    )
    assert (
        "We refunded €18.50 for Skin fade" in inbox_by_kind(db, world.user_id)["payment_refunded"]
    )


async def test_a_cancellation_states_what_was_paid_and_what_was_refunded(
    db: Conn, clean_db: str, tmp_path: Path, smtp_server: SmtpPeer, twilio_server: TwilioPeer
) -> None:
    """Paid (succeeded payments) and refunded (refunded ones), read when the cancellation is
    sent, on every channel; a booking with neither states neither."""
    world = make_world(db)
    booking = make_booking(db, world)
    unpaid = make_booking(db, make_world(db, with_user=False, email="bo@example.com"))
    pay(db, booking, 1850, "succeeded")
    pay(db, booking, 600, "refunded")  # a partial refund, its own row
    pay(db, booking, 9900, "failed", currency="USD")  # counts for neither
    db.execute("update booking.bookings set status = 'cancelled'")
    await deliver_everything_due(
        clean_db, tmp_path, **smtp_settings(smtp_server), **twilio_settings(twilio_server)
    )
    text, html = parts(emails_by_kind(db, booking, smtp_server)["booking_cancelled"])
    assert "Paid:       €18.50\nRefunded:   €6.00\n" in text
    assert re.search(r">Paid<.*>€18\.50<.*>Refunded<.*>€6\.00<", html, re.S)
    assert (
        "Paid €18.50. Refunded €6.00."
        in sms_by_kind(db, booking, twilio_server)["booking_cancelled"]
    )
    assert "Paid: €18.50. Refunded: €6.00." in inbox_by_kind(db, world.user_id)["booking_cancelled"]
    text, html = parts(emails_by_kind(db, unpaid, smtp_server)["booking_cancelled"])
    assert "Paid" not in text and "Refunded" not in text and "Refunded" not in html
    assert "refunded" not in sms_by_kind(db, unpaid, twilio_server)["booking_cancelled"]


# What the reference and the receipt read like in each language.
RECEIPT = {
    "en": {
        "label": "Booking reference",
        "subject": "Payment received: €25.00 – Fade & Co (ref. {})",
        "date": "Paid on:    Friday, 20 November 2026, 11:05 CET\n",
        "when": ">Friday, 20 November 2026, 11:05 CET<",
        "provider": "Paid with:  stripe\n",
    },
    "es": {
        "label": "Referencia de la reserva",
        "subject": "Pago recibido: 25,00 € – Fade & Co (ref. {})",
        "date": "Fecha:      viernes, 20 de noviembre de 2026, 11:05 CET\n",
        "when": ">viernes, 20 de noviembre de 2026, 11:05 CET<",
        "provider": "Pagado con: stripe\n",
    },
}


@pytest.mark.parametrize("locale", ["en", "es"])
async def test_every_booking_email_shows_the_reference_and_the_receipt_its_date_and_provider(
    db: Conn, clean_db: str, tmp_path: Path, smtp_server: SmtpPeer, locale: str
) -> None:
    """The reference (`pgnotify.booking_reference`) in the text and HTML of every kind of
    email about a booking, and in the receipt's subject; the receipt shows when and how the
    payment was made (its `updated_at` in the shop's zone, its provider)."""
    world = make_world(db, phone=None, with_user=False, customer_locale=locale)
    booking = every_customer_kind(db, world, "email")
    await deliver_everything_due(clean_db, tmp_path, **smtp_settings(smtp_server))
    emails = emails_by_kind(db, booking, smtp_server)
    assert set(emails) == CUSTOMER_KINDS
    reference = reference_of(db, booking)
    label = RECEIPT[locale]["label"]
    for kind, email in emails.items():
        text, html = parts(email)
        assert f"{label}: {reference}" in text, kind
        assert re.search(rf"{label} <strong[^>]*>{reference}</strong>", html), kind
    receipt = emails["payment_confirmed"]
    assert str(receipt["Subject"]) == RECEIPT[locale]["subject"].format(reference)
    text, html = parts(receipt)
    assert RECEIPT[locale]["date"] in text and RECEIPT[locale]["provider"] in text
    assert RECEIPT[locale]["when"] in html and ">stripe<" in html


# Ordinary names, as long as real ones often are; es with the accents Spanish has.
ORDINARY = {
    "en": {
        "shop_name": "Northside Barbers",
        "timezone": "Europe/London",
        "address": "221 King Street, Manchester M2 4LQ",
        "customer_name": "Sam Taylor",
        "staff_name": "Jordan",
        "service_name": "Beard trim and hot towel",
        "shop_locale": "en",
    },
    "es": {
        "shop_name": "Barbería Central",
        "timezone": "Europe/Madrid",
        "address": "Avenida de la Constitución 21, 28013 Madrid",
        "customer_name": "María José Fernández",
        "staff_name": "Lucía",
        "service_name": "Corte y arreglo de barba",
        "shop_locale": "es",
        "customer_locale": "es",
    },
}
OPT_OUT = {"en": "Reply STOP to opt out.", "es": "Responde STOP para darte de baja."}
ON_TIME = {"en": "Please arrive on time.", "es": "Llega puntual."}
REPLY_C = {"en": "Reply C to confirm.", "es": "Responde C para confirmar."}
AMOUNTS = {"en": ("€25.00", "€10.00"), "es": ("25,00 €", "10,00 €")}


@pytest.mark.parametrize("locale", ["en", "es"])
async def test_the_sms_say_stop_never_cancel_time_address_and_on_time_in_two_segments(
    db: Conn, clean_db: str, tmp_path: Path, twilio_server: TwilioPeer, locale: str
) -> None:
    """Every customer kind's SMS as Twilio receives it: the confirmation ends with the
    opt-out (the keyword stays `STOP`), no SMS offers a reply other than STOP (`CANCEL` is a
    carrier opt-out word), the 24 h reminder names time and address, the 2 h one asks to
    arrive on time, refunds and cancellations state amounts, and each fits 2 GSM-7 segments."""
    names = ORDINARY[locale]
    world = make_world(db, email=None, with_user=False, **names)
    booking = every_customer_kind(db, world, "sms")
    await deliver_everything_due(clean_db, tmp_path, **twilio_settings(twilio_server))
    bodies = sms_by_kind(db, booking, twilio_server)
    assert set(bodies) == CUSTOMER_KINDS

    for kind, body in bodies.items():
        seg = count_segments(body)
        assert (seg.encoding, seg.segments <= 2) == ("GSM-7", True), (kind, seg, body)
        assert not re.search(r"\bcancel\b", body, re.IGNORECASE), (kind, body)
        # Only STOP and C, the keywords pgnotify acts on; never YES (ambiguous to carriers).
        for reply in re.findall(r"\b(?:reply|responde)\s+(\S+)", body, re.IGNORECASE):
            assert reply in {"STOP", "C"}, (kind, body)
        assert ("C" in re.findall(r"\b(?:reply|responde)\s+(\S+)", body, re.IGNORECASE)) is (
            kind.startswith("reminder_")
        ), (kind, body)
        assert not re.search(r"\byes\b", body, re.IGNORECASE), (kind, body)

    (starts_at,) = db.execute(
        "select starts_at from booking.bookings where id = %s", (booking,)
    ).fetchone() or (None,)
    assert isinstance(starts_at, datetime)
    clock = starts_at.astimezone(ZoneInfo(names["timezone"])).strftime("%H:%M")
    address = fold_to_gsm7(names["address"])
    paid, refunded = AMOUNTS[locale]

    assert bodies["booking_confirmed"].endswith(OPT_OUT[locale])
    assert clock in bodies["reminder_24h"] and address in bodies["reminder_24h"]
    assert clock in bodies["reminder_2h"] and bodies["reminder_2h"].endswith(ON_TIME[locale])
    assert REPLY_C[locale] in bodies["reminder_24h"] and REPLY_C[locale] in bodies["reminder_2h"]
    assert refunded in bodies["payment_refunded"]
    assert paid in bodies["booking_cancelled"] and refunded in bodies["booking_cancelled"]
