"""In-app delivery: rows in ``pgnotify.inbox``, written exactly once, in one transaction.

It is not a channel (nothing leaves the process): it is a database write. The worker locks
a batch of due in-app rows (``queries.lock_inapp``: no lease, no ``sending`` write),
composes them, and before that transaction commits ``finish_inapp`` writes every row's
outcome in one statement: the inbox message and ``sent`` together for those that
rendered, ``skipped``, ``failed`` or a retry for the others. A transaction that does not
commit (a crash, a lost connection, a shutdown past its grace) leaves the rows pending and
untouched: nothing was delivered and nothing is lost.
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
    """``queries.FINISH_INAPP``'s arguments (pure): a column per field, an entry per
    outcome, with the message of each ``sent`` one."""
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
            m.title if m else None,
            m.body if m else None,
            inbox_data(n) if m else None,
            n.customer_id,
            n.recipient,
            o.release,
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
    """Write the locked rows' outcomes (and inbox messages); returns the ids written."""
    if not outcomes:
        return set()
    row = await conn.fetchrow(
        queries.FINISH_INAPP, *finish_args(batch, outcomes, messages, daemon_id)
    )
    return set(row["ids"]) if row is not None else set()
