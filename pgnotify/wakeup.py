"""A doorbell for coroutines: ring once, every waiter since the last ring wakes.

Take a ``token()`` *before* looking for work and wait on it (``wait_event``) after finding
none: a ring that happens in between is never lost.
"""

from __future__ import annotations

import asyncio
import contextlib


class Doorbell:
    def __init__(self) -> None:
        self._event = asyncio.Event()

    def ring(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    def token(self) -> asyncio.Event:
        return self._event


async def wait_event(event: asyncio.Event, seconds: float | None) -> bool:
    """Wait for ``event`` (a doorbell's token, the stop request) at most ``seconds`` (None:
    no deadline); whether it is set, even if it was set just as the time ran out."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
    return event.is_set()
