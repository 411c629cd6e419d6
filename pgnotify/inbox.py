"""In-app delivery: rows in ``pgnotify.inbox``, written exactly once, in the claim's
transaction.

It is not a channel (nothing leaves the process): it is a database write. The claim only
locks in-app rows (no lease, no ``sending`` write); the worker composes them and, before
that transaction commits, ``finish_inapp`` writes every row's outcome in one statement:
the inbox message and ``sent`` together for those that rendered, ``skipped``, ``failed``
or a retry for the others. A rolled-back transaction leaves the rows pending, untouched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from pgnotify import queries
from pgnotify.channels.base import InappMessage
from pgnotify.model import ClaimedNotification
from pgnotify.outcome import Outcome


def inbox_data(n: ClaimedNotification) -> dict[str, str | None]:
    """The ``data`` of an inbox message: what the application links it to."""
    return {
        "booking_id": str(n.booking_id) if n.booking_id else None,
        "payment_id": str(n.payment_id) if n.payment_id else None,
        "kind": n.kind,
    }


def finish_args(
    batch: Sequence[ClaimedNotification],
    outcomes: Sequence[Outcome],
    messages: Mapping[int, InappMessage],
    daemon_id: str,
) -> tuple[Any, ...]:
    """``queries.FINISH_INAPP``'s arguments (pure): one entry per outcome, with the
    message of each ``sent`` one."""
    by_id = {n.id: n for n in batch}
    columns: list[list[Any]] = [[] for _ in range(10)]
    for o in outcomes:
        n = by_id[o.id]
        m = messages.get(o.id) if o.status == "sent" else None
        row = (
            o.id,
            o.status,
            o.delay,
            o.last_error,
            o.release,
            m.title if m else None,
            m.body if m else None,
            inbox_data(n) if m else None,
            n.customer_id,
            n.recipient,
        )
        for column, value in zip(columns, row, strict=True):
            column.append(value)
    return (*columns, daemon_id)


async def finish_inapp(
    conn: asyncpg.Connection | PoolConnectionProxy,
    daemon_id: str,
    batch: Sequence[ClaimedNotification],
    outcomes: Sequence[Outcome],
    messages: Mapping[int, InappMessage],
) -> set[int]:
    """Record the in-app outcomes inside the claim's transaction; returns the ids written."""
    if not outcomes:
        return set()
    rows = await conn.fetch(
        queries.FINISH_INAPP, *finish_args(batch, outcomes, messages, daemon_id)
    )
    return {int(r["id"]) for r in rows}
