"""Branding and what the customer reads, through a real daemon (CONTRACT.md §6, issue 13
item 6): the shop's accent colour and logo in the shipped layout, the time with its zone
once, a move showing the old time struck through beside the new one, and text parts in
quoted-printable, readable as they arrive at the SMTP peer and as the outbox keeps them."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import psycopg
import pytest

from tests.daemon.harness import smtp_settings
from tests.daemon.test_customer_messages import (
    deliver_everything_due,
    emails_by_kind,
    parts,
    reference_of,
)
from tests.factories import make_booking, make_world
from tests.peers.smtp import SmtpPeer

Conn = psycopg.Connection[Any]

LOGO = "https://cdn.fade.example/logo.png"
LINKS = {
    "NOTIFICATION_LINK_BASE_URL": "https://book.example.com",
    "NOTIFICATION_LINK_SECRET": "branding-test-secret",
}
DEFAULT_ACCENT = "#2563eb"


def moved_booking(db: Conn, *, brand_color: str | None, logo_url: str | None) -> UUID:
    """A booking of a shop with this branding, confirmed for 17:48 Madrid time on Monday
    1 March 2027 (45 minutes), then moved by the application to 10:15 the next day."""
    world = make_world(db, with_user=False, phone=None)
    db.execute(
        "update booking.shops set brand_color = %s, logo_url = %s where id = %s",
        (brand_color, logo_url, world.shop_id),
    )
    madrid = ZoneInfo("Europe/Madrid")
    booking = make_booking(db, world, starts_at=datetime(2027, 3, 1, 17, 48, tzinfo=madrid))
    db.execute(
        "update booking.bookings set starts_at = %s where id = %s",
        (datetime(2027, 3, 2, 10, 15, tzinfo=madrid), booking),
    )
    return booking


def accents(html: str) -> set[str]:
    """The colours of the header bar and the button (each a `bgcolor` of a table cell)."""
    return set(re.findall(r'<td[^>]* bgcolor="(#[0-9a-fA-F]{6})"', html))


async def test_a_move_shows_the_old_time_struck_through_in_the_shops_colours_with_its_logo(
    db: Conn, clean_db: str, tmp_path: Path, smtp_server: SmtpPeer
) -> None:
    """The shop's colour paints the header and the button, its https logo is an image of
    fixed size named after the shop; each time shows its zone once; the move shows the
    former time struck through (HTML) and as "Was:" (text). A shop without branding, or
    with a logo that is not https, gets the default colour and its name instead."""
    branded = moved_booking(db, brand_color="#0F766E", logo_url=LOGO)
    plain = moved_booking(db, brand_color=None, logo_url="http://cdn.fade.example/logo.png")
    with pytest.raises(psycopg.errors.CheckViolation), db.transaction():
        db.execute("update booking.shops set brand_color = 'red'")
    await deliver_everything_due(clean_db, tmp_path, **smtp_settings(smtp_server), **LINKS)

    emails = emails_by_kind(db, branded, smtp_server)
    assert {"booking_confirmed", "booking_rescheduled"} <= set(emails)
    for email in emails.values():
        text, html = parts(email)
        assert accents(html) == {"#0f766e"}
        assert re.search(
            rf'<img src="{re.escape(LOGO)}" alt="Fade &amp; Co" width="\d+" height="\d+"', html
        )
    text, html = parts(emails["booking_rescheduled"])
    assert "When:       Tuesday, 2 March 2027, 10:15–11:00 CET\n" in text
    assert "Was:        Monday, 1 March 2027, 17:48–18:33 CET\n" in text
    assert re.search(
        r"Tuesday, 2 March 2027<br>10:15–11:00 CET<br><span[^>]*>Was <s>Monday, 1 March 2027, "
        r"17:48–18:33 CET</s></span>",
        html,
    )
    text, html = parts(emails["booking_confirmed"])
    assert "10:15–11:00 CET" in text and "</s>" not in html and "Was:" not in text

    for email in emails_by_kind(db, plain, smtp_server).values():
        text, html = parts(email)
        assert accents(html) == {DEFAULT_ACCENT}
        assert "<img" not in html and ">Fade &amp; Co</td>" in html


async def test_text_parts_are_quoted_printable_readable_at_the_peer_and_in_the_outbox(
    db: Conn, clean_db: str, tmp_path: Path, smtp_server: SmtpPeer
) -> None:
    """The text and HTML parts travel quoted-printable (the calendar stays base64): the
    message as the SMTP peer received it and as the outbox wrote it shows the text in clear,
    in lines of at most 78 octets."""
    booking = moved_booking(db, brand_color=None, logo_url=None)
    reference = reference_of(db, booking)
    await deliver_everything_due(clean_db, tmp_path, **smtp_settings(smtp_server))
    outbox = tmp_path / "outbox"
    db.execute(
        "select pgnotify.notify_booking(%s, 'booking_rescheduled', array['email'])", (booking,)
    )
    await deliver_everything_due(clean_db, outbox)  # no SMTP: the outbox writes it

    received = [m.data for m in smtp_server.messages]
    written = [p.read_bytes() for p in sorted(outbox.rglob("*.eml"))]
    assert received and written
    for raw in received + written:
        assert raw.count(b"Content-Transfer-Encoding: quoted-printable\r\n") == 2
        assert b"Content-Transfer-Encoding: base64\r\n" in raw  # the invitation
        assert f"Booking reference: {reference}\r\n".encode() in raw
        assert b"Service:    Skin fade\r\n" in raw
        assert all(len(line) <= 78 for line in raw.split(b"\r\n")), "a line over 78 octets"
