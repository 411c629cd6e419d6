"""Channel pauses: a channel whose credentials were rejected stops sending for a while.

Pure bookkeeping over a monotonic clock; the worker consults it before claiming and the
health socket reports paused channels as degraded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pgnotify.outcome import backoff


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

    def succeeded(self, channel: str) -> None:
        self._states.pop(channel, None)

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
