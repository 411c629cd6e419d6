"""Values that cross module boundaries inside the daemon."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID


@dataclass(frozen=True, slots=True)
class Catalog:
    """What pgnotify sends and over what: the rows of ``pgnotify.kinds`` and
    ``pgnotify.channels``, the one list every other part is checked against at start."""

    kinds: tuple[str, ...]
    channels: tuple[str, ...]
    # The kinds addressed to the shop (``kinds.audience = 'shop'``), never sent in-app.
    shop_kinds: tuple[str, ...] = ()
    # The kinds about one payment (``kinds.about_payment``).
    payment_kinds: tuple[str, ...] = ()

    @classmethod
    def from_row(cls, row: Iterable[Any] | None) -> Catalog:
        """From ``queries.CATALOG``'s one row (kinds, channels, shop kinds, payment kinds),
        by either driver."""
        kinds, channels, shop_kinds, payment_kinds = row if row is not None else ((),) * 4
        return cls(tuple(kinds), tuple(channels), tuple(shop_kinds), tuple(payment_kinds))


@dataclass(frozen=True, slots=True)
class ClaimedNotification:
    """A row of ``pgnotify.notifications`` this daemon holds: in ``sending`` under its
    lease, or (in-app) locked by the transaction that will write its outcome.

    ``context`` is the raw rendering context loaded for the whole batch in one query
    (see ``queries.py``: booking, shop, staff, service, customer, payment as dicts), or
    ``None`` when the booking no longer exists. ``stale_reason`` is set by SQL when the
    notification should no longer be sent (a reminder whose booking changed).
    """

    id: int
    kind: str
    channel: str
    recipient: str | None
    booking_id: UUID | None
    payment_id: UUID | None
    attempts: int
    run_at: datetime
    context: dict[str, Any] | None
    stale_reason: str | None = None
    # The customer it is for, as the claim recorded it (None for the shop's alerts).
    customer_id: UUID | None = None
    # The invitation's SEQUENCE, frozen into the row when it was queued (None: no ICS).
    ics_sequence: int | None = None
    # Who reads it (``pgnotify.kinds.audience``): ``customer``, or ``shop`` for the shop's
    # alerts, which are addressed to the shop and written in its language.
    audience: str = "customer"
