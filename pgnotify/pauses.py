"""Channel pauses: a channel whose credentials were rejected stops sending for a while.

Pure bookkeeping over a monotonic clock, and the only place pauses are decided: the worker
reports each result (``observe``) and consults ``paused()`` before claiming; the health
socket reports paused channels as degraded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pgnotify.channels.base import Receipt
from pgnotify.errors import ConfigurationError
from pgnotify.outcome import backoff
from pgnotify.text import one_line


@dataclass
class _State:
    failures: int = 0
    until: float = 0.0
    reason: str | None = None


@dataclass
class ChannelPauses:
    base: float = 30.0
    cap: float = 600.0
    clock: Callable[[], float] = time.monotonic
    _states: dict[str, _State] = field(default_factory=dict)

    def pause(self, channel: str, reason: str) -> float:
        """Pause ``channel`` with exponential backoff; returns the pause in seconds."""
        state = self._states.setdefault(channel, _State())
        now = self.clock()
        if state.until > now:  # already paused by a sibling send of the same batch
            return state.until - now
        state.failures += 1
        delay = backoff(state.failures, self.base, self.cap)
        state.until, state.reason = now + delay, reason
        return delay

    def observe(self, channel: str, result: Receipt | BaseException) -> float:
        """Account one send's result: rejected credentials pause the channel, a receipt
        resumes it. Returns the pause in seconds (0 when the channel is not paused)."""
        if isinstance(result, ConfigurationError):
            return self.pause(channel, one_line(str(result)))
        if isinstance(result, Receipt):
            self._states.pop(channel, None)
        return 0.0

    def paused(self) -> list[str]:
        now = self.clock()
        return sorted(c for c, s in self._states.items() if s.until > now)

    def next_resume_in(self) -> float | None:
        now = self.clock()
        waits = [s.until - now for s in self._states.values() if s.until > now]
        return min(waits) if waits else None

    def describe(self, channel: str) -> dict[str, object]:
        state = self._states.get(channel)
        if state is None or state.until <= self.clock():
            return {"state": "ok"}
        return {
            "state": "degraded",
            "reason": state.reason,
            "resumes_in_s": round(state.until - self.clock(), 1),
        }
