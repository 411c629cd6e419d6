"""Sample raw contexts, shaped like the jsonb the daemon loads for a batch."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from pgnotify.model import ClaimedNotification

BOOKING_ID = "7f1c2d3e-4b5a-4c6d-8e9f-0a1b2c3d4e5f"
SHOP_ID = "5a0e8a52-9f0c-4d3b-9a51-2f7a3c1d0e11"

RAW: dict[str, Any] = {
    "booking": {
        "id": BOOKING_ID,
        "starts_at": "2026-12-01T14:30:00+00:00",
        "ends_at": "2026-12-01T15:15:00+00:00",
        "duration_minutes": 45,
        "total_cents": 4500,
        "currency": "EUR",
        "status": "confirmed",
        "cancellation_reason": None,
        "sequence": 2,
    },
    "shop": {
        "id": SHOP_ID,
        "name": "Studio Nine",
        "timezone": "Europe/Madrid",
        "email": "hello@studionine.example",
        "phone": "+34911234567",
        "address": "Calle Mayor 12, Madrid",
        "locale": "en",
    },
    "staff": {"id": "0b5c", "name": "Ana"},
    "service": {
        "id": "9d1e",
        "name": "Haircut",
        "duration_minutes": 45,
        "price_cents": 4500,
        "currency": "EUR",
    },
    "customer": {
        "id": "c7a1",
        "name": "Maria Lopez",
        "email": "maria@example.com",
        "phone": "+34600111222",
        "user_id": "3f0d0c3a-1111-4222-8333-444455556666",
        "locale": None,
        "timezone": None,
    },
    "payment": {
        "id": "p1",
        "amount_cents": 4500,
        "currency": "EUR",
        "status": "succeeded",
        "provider": "stripe",
        "provider_ref": "pi_3Nx",
        "failure_reason": None,
    },
}


def raw(**changes: dict[str, Any] | None) -> dict[str, Any]:
    """A deep copy of ``RAW`` with sections updated (``payment=None`` drops the payment)."""
    data = copy.deepcopy(RAW)
    for section, values in changes.items():
        if values is None:
            data[section] = None
        else:
            data[section].update(values)
    return data


def minimal() -> dict[str, Any]:
    """Every optional field null: what a bare-bones shop and customer look like."""
    return raw(
        shop={"email": None, "phone": None, "address": None},
        customer={"email": None, "phone": None, "user_id": None, "locale": None},
        payment=None,
    )


def claimed(
    kind: str = "booking_confirmed",
    channel: str = "email",
    *,
    id: int = 101,
    recipient: str | None = "maria@example.com",
    context: dict[str, Any] | None = None,
) -> ClaimedNotification:
    """A ``ClaimedNotification`` as the worker hands it over."""
    return ClaimedNotification(
        id=id,
        kind=kind,
        channel=channel,
        recipient=recipient,
        booking_id=UUID(BOOKING_ID),
        payment_id=None,
        attempts=0,
        run_at=datetime(2026, 11, 30, 14, 30, tzinfo=UTC),
        context=context if context is not None else raw(),
    )
