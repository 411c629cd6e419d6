"""Hostile data in every customer- and shop-supplied field, through the real pipeline.

Rows go in through the booking model, the triggers queue them, the claim statement loads
their context, the composer renders them and the MIME builder serialises the email, which
the stdlib parser reads back. Nothing may inject a header or a recipient, leave HTML
unescaped, or escape as anything but a classified error for that one notification.
"""

from __future__ import annotations

from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgnotify.channels.base import EmailMessage, InappMessage, SmsMessage
from pgnotify.channels.mime import build_mime
from pgnotify.compose import Composer
from pgnotify.errors import DeliveryError
from pgnotify.templates import TemplateRenderer
from pgnotify.worker import to_claimed
from tests.daemon.harness import count_reaches, make_settings, running
from tests.factories import daemon_connection, make_booking, make_world, take_due
from tests.peers.smtp import SmtpPeer

Conn = psycopg.Connection[Any]

NASTY = [
    "<script>alert('x')</script>",
    "Ann\r\nBcc: victim@evil.example",
    "Bob\nTo: other@evil.example",
    'Zoë "quoted" <not@an.address>, extra@evil.example',
    "=?utf-8?q?encoded?=",
    "名前 😀",
    "x" * 300,
    "\u202eevil",
    "a\x00b",
    "",
    " ",
]
hostile = st.one_of(st.sampled_from(NASTY), st.text(max_size=60))
# The only hostile inputs nothing can be sent to, each with the reason its rows are
# `skipped` at enqueue (they are never claimed). Any other input must be delivered: a
# refusal anywhere else is a failure, not a tolerated outcome.
NOT_AN_EMAIL = "customer email is not a valid address"
NOT_E164 = "customer phone is not in E.164 format"
UNDELIVERABLE_EMAILS = {
    "a@b.c\r\nBcc: x@evil.example": NOT_AN_EMAIL,
    "no-at-sign": NOT_AN_EMAIL,
    "two@@example.com": NOT_AN_EMAIL,
    "ana@example.com, eve@evil.example": NOT_AN_EMAIL,
    "<ana@example.com>": NOT_AN_EMAIL,
    '"quoted"@example.com': NOT_AN_EMAIL,
}
UNDELIVERABLE_PHONES = {
    "600111222": NOT_E164,
    "+1 555 123": NOT_E164,
    "+15551234567\nx": NOT_E164,
    "": "customer has no phone number",
}
emails = st.one_of(st.sampled_from(["ana@example.com", *UNDELIVERABLE_EMAILS]), st.emails())
phones = st.one_of(
    st.sampled_from(["+34600111222", *UNDELIVERABLE_PHONES]),
    st.from_regex(r"\+[1-9][0-9]{6,14}", fullmatch=True),
)


def check_email(message: EmailMessage, raw: bytes, recipient: str) -> None:
    parsed = BytesParser(policy=default_policy).parsebytes(raw)
    assert parsed["To"].addresses[0].addr_spec == recipient
    assert len(parsed["To"].addresses) == 1
    assert parsed["Bcc"] is None and parsed["Cc"] is None
    for header in ("Subject", "From", "To", "Reply-To"):
        value = str(parsed[header] or "")
        assert "\r" not in value and "\n" not in value
    html_part = parsed.get_body(preferencelist=("html",))
    assert html_part is not None
    html = html_part.get_content()
    assert "<script>" not in html
    text_part = parsed.get_body(preferencelist=("plain",))
    assert text_part is not None and text_part.get_content().strip()


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    customer_name=hostile,
    shop_name=hostile,
    address=hostile,
    staff_name=hostile,
    service_name=hostile,
    reason=hostile,
    email=emails,
    phone=phones,
)
async def test_hostile_fields_never_inject_and_never_crash_the_batch(
    db: Conn,
    clean_db: str,
    tmp_path: Path,
    customer_name: str,
    shop_name: str,
    address: str,
    staff_name: str,
    service_name: str,
    reason: str,
    email: str,
    phone: str,
) -> None:
    """Each row is skipped for a named reason or composed and built: nothing else.

    Only the recipients in ``UNDELIVERABLE_*`` may keep a channel from delivering; no
    hostile name, address, service or cancellation reason may cost a notification.
    """
    db.execute("delete from pgnotify.notifications")
    # Postgres text cannot hold NUL; the application could not store it either.
    clean = {
        k: v.replace("\x00", "")
        for k, v in {
            "customer_name": customer_name,
            "shop_name": shop_name,
            "address": address,
            "staff_name": staff_name,
            "service_name": service_name,
        }.items()
    }
    world = make_world(db, email=email, phone=phone, **clean)
    booking = make_booking(db, world)
    db.execute(
        "update booking.bookings set status = 'cancelled', cancellation_reason = %s where id = %s",
        (reason.replace("\x00", ""), booking),
    )
    # Each channel either has a named reason to skip every row, or must deliver them all.
    why_not = {"email": UNDELIVERABLE_EMAILS.get(email), "sms": UNDELIVERABLE_PHONES.get(phone)}
    skipped = db.execute(
        "select channel, last_error from pgnotify.notifications where status = 'skipped'"
    ).fetchall()
    assert {channel for channel, _ in skipped} == {c for c, why in why_not.items() if why}
    for channel, last_error in skipped:
        reason = why_not.get(channel)
        assert reason and last_error.startswith(reason), (channel, last_error)

    settings_ = make_settings(clean_db, tmp_path, FROM_EMAIL="bookings@shop.example")
    composer = Composer(settings_, TemplateRenderer.from_settings(settings_))
    async with daemon_connection(clean_db) as conn:
        claimed = to_claimed(await take_due(conn, "hostile-test"))
    # The confirmation and the cancellation, on every channel that has a recipient.
    assert sorted((n.kind, n.channel) for n in claimed) == sorted(
        (kind, channel)
        for kind in ("booking_confirmed", "booking_cancelled")
        for channel in ("email", "sms", "inapp")
        if not why_not.get(channel)
    )
    for n, message in zip(claimed, composer.compose_batch(claimed), strict=True):
        assert not isinstance(message, DeliveryError), f"{n.kind} {n.channel}: {message}"
        if isinstance(message, EmailMessage):
            assert n.recipient is not None
            raw = build_mime(message, from_email=settings_.FROM_EMAIL)  # never refused
            check_email(message, raw, n.recipient)
        elif isinstance(message, SmsMessage):
            assert message.to_number == phone
            assert message.body.strip()
        else:
            assert isinstance(message, InappMessage)
            assert message.title and "\n" not in message.title


async def test_hostile_data_through_a_running_daemon_reaches_smtp_safely(
    db: Conn, clean_db: str, tmp_path: Path, smtp_server: SmtpPeer
) -> None:
    """Every hostile name and address still gets its confirmation, once, uninjected.

    None of these rows is undeliverable: the recipient address is valid and every hostile
    value sits in a display name, the shop's name or the address, which the composer
    flattens and the MIME builder encodes. So each must end ``sent``, with exactly one
    message at the SMTP server for its own recipient, and nothing may fail.
    """
    recipients = {}
    for i, nasty in enumerate(NASTY):
        world = make_world(
            db,
            customer_name=nasty.replace("\x00", "") or "x",
            shop_name=NASTY[-i - 1].replace("\x00", "") or "y",
            address=nasty.replace("\x00", ""),
            email=f"c{i}@example.com",
            phone=None,
            with_user=False,
        )
        recipients[make_booking(db, world)] = f"c{i}@example.com"
    settings_ = make_settings(
        clean_db,
        tmp_path,
        SMTP_SERVER=smtp_server.host,
        SMTP_PORT=smtp_server.port,
        SMTP_SECURITY="none",
        NOTIFICATION_BATCH_SIZE=5,
    )
    async with running(settings_):
        await count_reaches(
            clean_db,
            len(NASTY),
            "kind = 'booking_confirmed' and channel = 'email' and status in ('sent', 'failed')",
            timeout=30,
        )
    outcomes = db.execute(
        "select booking_id, status, last_error from pgnotify.notifications"
        " where kind = 'booking_confirmed' and channel = 'email'"
    ).fetchall()
    assert {booking: (status, error) for booking, status, error in outcomes} == {
        booking: ("sent", None) for booking in recipients
    }
    received = smtp_server.messages
    assert sorted(mail.rcpt_tos for mail in received) == sorted(
        (address,) for address in recipients.values()
    )
    for mail in received:
        check_email(None, mail.data, mail.rcpt_tos[0])  # type: ignore[arg-type]
