"""A doorbell for coroutines: ring once, every waiter since the last ring wakes.

Take a ``token()`` *before* looking for work and wait on it after finding none: a ring
that happens in between is never lost.
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

    @staticmethod
    async def wait(token: asyncio.Event, seconds: float | None) -> bool:
        """Wait for ``token`` to be rung; False on timeout."""
        if token.is_set():
            return True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await token.wait()
                return True
        return False
