"""In-app delivery: rows in ``pgnotify.inbox``, written exactly once.

It is not a channel (nothing leaves the process): it is a database write, so it takes a
whole batch in one statement that inserts the inbox rows and marks their notifications
sent together, and only for rows this daemon still holds.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from pgnotify import queries
from pgnotify.channels.base import InappMessage
from pgnotify.model import ClaimedNotification


async def deliver_inapp(
    pool: asyncpg.Pool,
    daemon_id: str,
    items: Sequence[tuple[ClaimedNotification, InappMessage]],
) -> set[int]:
    """Insert and mark sent; returns the ids now sent (the others were no longer ours)."""
    if not items:
        return set()
    ids: list[int] = []
    titles: list[str] = []
    bodies: list[str] = []
    data: list[dict[str, str | None]] = []
    for n, m in items:
        ids.append(n.id)
        titles.append(m.title)
        bodies.append(m.body)
        data.append(
            {
                "booking_id": str(n.booking_id) if n.booking_id else None,
                "payment_id": str(n.payment_id) if n.payment_id else None,
                "kind": n.kind,
            }
        )
    rows = await pool.fetch(queries.DELIVER_INAPP, ids, titles, bodies, data, daemon_id)
    return {int(r["id"]) for r in rows}
