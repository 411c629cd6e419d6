"""Hostile data in every customer- and shop-supplied field, through the real pipeline.

Rows go in through the booking model, the triggers queue them, the claim statement loads
their context, the composer renders them and the MIME builder serialises the email, which
the stdlib parser reads back. Nothing may inject a header or a recipient, leave HTML
unescaped, or escape as anything but a classified error for that one notification.
"""

from __future__ import annotations

import re
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgnotify import queries
from pgnotify.channels.base import EmailMessage, InappMessage, SmsMessage
from pgnotify.channels.mime import build_mime
from pgnotify.compose import Composer
from pgnotify.db import as_url, init_connection
from pgnotify.errors import DeliveryError
from pgnotify.templates import TemplateRenderer
from pgnotify.worker import to_claimed
from tests.daemon.harness import count_reaches, make_settings, running
from tests.factories import make_booking, make_world
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
emails = st.one_of(
    st.sampled_from(
        [
            "ana@example.com",
            "a@b.c\r\nBcc: x@evil.example",
            "no-at-sign",
            "two@@example.com",
            "ana@example.com, eve@evil.example",
            "<ana@example.com>",
            '"quoted"@example.com',
        ]
    ),
    st.emails(),
)
phones = st.one_of(
    st.sampled_from(["+34600111222", "600111222", "+1 555 123", "+15551234567\nx", ""]),
    st.from_regex(r"\+[1-9][0-9]{6,14}", fullmatch=True),
)

CLAIM_ALL = queries.CLAIM_DUE


async def claim_everything(dsn: str, limit: int = 100) -> list[Any]:
    conn = await asyncpg.connect(as_url(dsn), server_settings={"timezone": "UTC"})
    try:
        await init_connection(conn)
        return list(await conn.fetch(CLAIM_ALL, limit, "hostile-test", 60.0, []))
    finally:
        await conn.close()


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
    settings_ = make_settings(clean_db, tmp_path, FROM_EMAIL="bookings@shop.example")
    composer = Composer(settings_, TemplateRenderer.from_settings(settings_))
    claimed = to_claimed(await claim_everything(clean_db))
    assert claimed, "the booking's notifications were queued"
    skipped = db.execute(
        "select channel, last_error from pgnotify.notifications where status = 'skipped'"
    ).fetchall()
    for _channel, why in skipped:
        assert why  # every skip says why
    for n, message in zip(claimed, composer.compose_batch(claimed), strict=True):
        if isinstance(message, DeliveryError):
            assert str(message) and "\n" not in str(message)
            continue
        if isinstance(message, EmailMessage):
            assert n.recipient is not None
            try:
                raw = build_mime(message, from_email=settings_.FROM_EMAIL)
            except DeliveryError as exc:  # refused: a classified, one-line reason
                assert "\n" not in str(exc)
                continue
            check_email(message, raw, n.recipient)
        elif isinstance(message, SmsMessage):
            assert re.fullmatch(r"\+[1-9][0-9]{1,14}", message.to_number)
            assert message.body.strip()
        else:
            assert isinstance(message, InappMessage)
            assert "\n" not in message.title


async def test_hostile_data_through_a_running_daemon_reaches_smtp_safely(
    db: Conn, clean_db: str, tmp_path: Path, smtp_server: SmtpPeer
) -> None:
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
        make_booking(db, world)
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
            timeout=20,
        )
    received = smtp_server.messages
    assert len(received) >= len(NASTY) - 2, "hostile names still get their email"
    for mail in received:
        assert len(mail.rcpt_tos) == 1
        check_email(None, mail.data, mail.rcpt_tos[0])  # type: ignore[arg-type]
    failed = db.execute(
        "select last_error from pgnotify.notifications where status = 'failed'"
    ).fetchall()
    assert len(received) + len(failed) == len(NASTY)
    assert all(r[0] and "\n" not in r[0] for r in failed)
