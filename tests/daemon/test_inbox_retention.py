"""The daemon's retention loop purges read in-app messages past the retention, too."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import psycopg

from tests.daemon.harness import make_settings, running, wait_until

Conn = psycopg.Connection[Any]


def inbox_message(db: Conn, *, age: str, read: bool) -> int:
    row = db.execute(
        "insert into pgnotify.inbox (user_id, kind, title, body, created_at, read_at)"
        " values (%s, 'booking_confirmed', 'Booked', 'See you', now() - %s::interval,"
        "         case when %s then now() end) returning id",
        (uuid.uuid4(), age, read),
    ).fetchone()
    assert row is not None
    return int(row[0])


def inbox_ids(db: Conn) -> set[int]:
    return {i for (i,) in db.execute("select id from pgnotify.inbox").fetchall()}


async def test_the_retention_loop_purges_read_inbox_messages_past_retention(
    db: Conn, clean_db: str, tmp_path: Path
) -> None:
    """With NOTIFICATION_RETENTION_DAYS=1, a message read and two days old goes within
    seconds of the start; an unread one of the same age and a read one of today stay."""
    old_read = inbox_message(db, age="2 days", read=True)
    old_unread = inbox_message(db, age="2 days", read=False)
    recent_read = inbox_message(db, age="1 hour", read=True)
    settings = make_settings(
        clean_db, tmp_path, NOTIFICATION_RETENTION_DAYS=1, NOTIFICATION_PURGE_INTERVAL=1.0
    )
    async with running(settings):
        await wait_until(lambda: old_read not in inbox_ids(db), timeout=15)
    assert inbox_ids(db) == {old_unread, recent_read}
