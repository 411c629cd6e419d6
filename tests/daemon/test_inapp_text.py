"""In-app messages are stored whatever a template rendered: one row's text never fails the
inbox write of its batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg

from tests.daemon.harness import count_reaches, make_settings, running
from tests.factories import make_booking, make_world

Conn = psycopg.Connection[Any]


def inapp_row(db: Conn, booking: UUID) -> tuple[int, str, str | None]:
    row = db.execute(
        "select id, status, last_error from pgnotify.notifications"
        " where booking_id = %s and channel = 'inapp'",
        (booking,),
    ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


async def test_a_nul_byte_from_a_template_never_stops_the_inbox_write(
    db: Conn, clean_db: str, tmp_path: Path
) -> None:
    """A shop's in-app template that renders a NUL byte (which Postgres text cannot hold)
    gets its message stored with a replacement character; it fails no other row's write."""
    root = tmp_path / "templates"
    odd = make_world(db, shop_name="Odd", email=None, phone=None)
    body = root / "shops" / str(odd.shop_id) / "en" / "booking_confirmed" / "inapp_body.txt"
    body.parent.mkdir(parents=True)
    body.write_text('before{{ "\\x00" }}after')
    others = [make_world(db, shop_name=f"Shop {i}", email=None, phone=None) for i in range(2)]
    bookings = [make_booking(db, odd), *(make_booking(db, w) for w in others)]

    settings = make_settings(clean_db, tmp_path / "outbox", NOTIFICATION_TEMPLATES_DIR=root)
    async with running(settings):
        await count_reaches(clean_db, 3, "channel = 'inapp' and status = 'sent'")
    assert [inapp_row(db, b)[1] for b in bookings] == ["sent"] * 3
    stored = db.execute(
        "select body from pgnotify.inbox where notification_id = %s",
        (inapp_row(db, bookings[0])[0],),
    ).fetchone()
    assert stored == ("before\ufffdafter",)
