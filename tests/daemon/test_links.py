"""Signed links as the customer receives them (CONTRACT.md §6), through a real daemon, the
SMTP peer and the Twilio-shaped peer: every booking email carries the manage link (a
button in HTML, the URL in text), `payment_failed` the pay link, the confirmation and
reminder SMS the manage link within two GSM-7 segments; each token is checked here with
an HMAC computed independently of pgnotify.links."""

from __future__ import annotations

import base64
import hashlib
import hmac
import html as htmllib
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit
from uuid import UUID

import psycopg
import pytest

from pgnotify.segments import count_segments
from tests.daemon.harness import smtp_settings, twilio_settings
from tests.daemon.test_customer_messages import (
    BY_HAND,
    CUSTOMER_KINDS,
    ORDINARY,
    deliver_everything_due,
    emails_by_kind,
    every_customer_kind,
    parts,
    sms_by_kind,
)
from tests.factories import make_world
from tests.peers.smtp import SmtpPeer
from tests.peers.twilio import TwilioPeer

Conn = psycopg.Connection[Any]

BASE = "https://book.example.com/app"
SECRET = "a-link-secret-only-this-test-knows"
LINKS = {"NOTIFICATION_LINK_BASE_URL": BASE + "/", "NOTIFICATION_LINK_SECRET": SECRET}
URL = re.compile(r"https://book\.example\.com/app/bookings/[^\s\"<>]+")
SMS_WITH_LINK = ("booking_confirmed", "reminder_24h", "reminder_2h")


def expected_token(booking: UUID) -> str:
    """CONTRACT §6, written out: base64url, no padding, HMAC-SHA256(secret, id text)."""
    mac = hmac.new(SECRET.encode(), str(booking).lower().encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def links_in(text: str, booking: UUID) -> dict[str, str]:
    """``{"manage" | "pay": token}`` of the booking's links in ``text``; asserts their shape."""
    found: dict[str, str] = {}
    for url in URL.findall(htmllib.unescape(text)):
        parts_ = urlsplit(url)
        page = parts_.path.removeprefix("/app/bookings/")
        which = "pay" if page.endswith("/pay") else "manage"
        assert page.removesuffix("/pay") == str(booking), url
        (token,) = parse_qs(parts_.query, strict_parsing=True)["token"]
        assert found.setdefault(which, token) == token, url
    return found


@pytest.mark.parametrize("locale", ["en", "es"])
async def test_every_message_links_to_the_booking_with_a_token_the_application_can_verify(
    db: Conn,
    clean_db: str,
    tmp_path: Path,
    smtp_server: SmtpPeer,
    twilio_server: TwilioPeer,
    locale: str,
) -> None:
    world = make_world(db, with_user=False, **ORDINARY[locale])
    db.execute("update booking.shops set phone = '+442071234567' where id = %s", (world.shop_id,))
    booking = every_customer_kind(db, world, "sms")
    for kind in BY_HAND:
        db.execute("select pgnotify.notify_booking(%s, %s, array['email'])", (booking, kind))
    await deliver_everything_due(
        clean_db,
        tmp_path,
        **smtp_settings(smtp_server),
        **twilio_settings(twilio_server),
        **LINKS,
    )
    token = expected_token(booking)

    emails = emails_by_kind(db, booking, smtp_server)
    assert set(emails) == CUSTOMER_KINDS
    for kind, email in emails.items():
        text, html = parts(email)
        wanted = {"manage": token, "pay": token} if kind == "payment_failed" else {"manage": token}
        assert links_in(text, booking) == wanted, kind
        assert links_in(html, booking) == wanted, kind
        # The button: a link inside a table cell painted in the accent colour.
        button = "pay" if kind == "payment_failed" else ""
        assert re.search(
            rf'<td align="center" bgcolor="#[0-9a-f]{{6}}"[^>]*><a href="{re.escape(BASE)}'
            rf"/bookings/{booking}/?{button}\?token={token}\"",
            html,
        ), kind
        assert "https://www.google.com/maps/search/?api=1&amp;query=" in html, kind
        assert 'href="tel:+442071234567"' in html, kind

    bodies = sms_by_kind(db, booking, twilio_server)
    for kind, body in bodies.items():
        seg = count_segments(body)
        assert (seg.encoding, seg.segments <= 2) == ("GSM-7", True), (kind, seg, body)
        assert links_in(body, booking) == ({"manage": token} if kind in SMS_WITH_LINK else {})
