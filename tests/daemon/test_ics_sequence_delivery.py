"""A running daemon sends each invitation with the SEQUENCE frozen when it was queued.

Confirmed, moved and cancelled within one second: the three emails' invitations carry
SEQUENCE 0, 1 and 2, so a calendar applies each one over the last.
"""

from __future__ import annotations

from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import psycopg

from tests.daemon.harness import make_settings, running, wait_until
from tests.factories import make_booking, make_world

Conn = psycopg.Connection[Any]


def sequence_of(eml: Path) -> tuple[str, int]:
    message = BytesParser(policy=default_policy).parsebytes(eml.read_bytes())
    assert isinstance(message, EmailMessage)
    (calendar,) = [p for p in message.walk() if p.get_content_type() == "text/calendar"]
    lines = calendar.get_content().replace("\r\n ", "").split("\r\n")
    method = next(line for line in lines if line.startswith("METHOD:"))
    sequence = next(line for line in lines if line.startswith("SEQUENCE:"))
    return method.removeprefix("METHOD:"), int(sequence.removeprefix("SEQUENCE:"))


async def test_invitations_changed_within_one_second_supersede_each_other(
    db: Conn, clean_db: str, tmp_path: Path
) -> None:
    world = make_world(db, phone=None, with_user=False)
    with db.transaction():
        booking = make_booking(db, world)
        db.execute(
            "update booking.bookings set starts_at = starts_at + interval '1 hour' where id = %s",
            (booking,),
        )
        db.execute("update booking.bookings set status = 'cancelled' where id = %s", (booking,))
    ids = [
        i
        for (i,) in db.execute(
            "select id from pgnotify.notifications where booking_id = %s and channel = 'email'"
            " and kind in ('booking_confirmed', 'booking_rescheduled', 'booking_cancelled')"
            " order by id",
            (booking,),
        ).fetchall()
    ]
    assert len(ids) == 3
    outbox = tmp_path / "outbox"
    async with running(make_settings(clean_db, outbox)):
        await wait_until(lambda: all((outbox / f"{i}.eml").exists() for i in ids), timeout=15)
    assert [sequence_of(outbox / f"{i}.eml") for i in ids] == [
        ("REQUEST", 0),
        ("REQUEST", 1),
        ("CANCEL", 2),
    ]
