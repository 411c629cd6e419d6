"""What happens to a row after an attempt: pure functions, unit-tested without a database.

``decide`` maps a channel's result (a receipt or a raised error) to the row's next state.
The mapping is the whole retry policy of pgnotify, in one place.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pgnotify.channels.base import Receipt
from pgnotify.errors import (
    ConfigurationError,
    DeliveryError,
    PermanentError,
    SkipNotification,
    TransientError,
)
from pgnotify.text import one_line

Status = Literal["sent", "pending", "failed", "skipped"]
JITTER = 0.10


@dataclass(frozen=True, slots=True)
class Outcome:
    """The next state of one row, as ``queries.RECORD_OUTCOMES`` applies it."""

    id: int
    status: Status
    delay: float | None = None
    last_error: str | None = None
    provider_id: str | None = None
    release: bool = False
    opt_out: bool = False


def jittered(seconds: float, rng: random.Random | None = None) -> float:
    """``seconds`` ± ``JITTER`` (10 %), so retries of a burst do not return as a burst."""
    r = (rng or random).uniform(-JITTER, JITTER)
    return max(0.0, seconds * (1.0 + r))


def retry_delay(attempts: int, delays: Sequence[float]) -> float:
    """Base delay after attempt number ``attempts`` (1-based); the last delay repeats."""
    if not delays:
        return 0.0
    return float(delays[min(max(attempts, 1), len(delays)) - 1])


def backoff(failures: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Capped exponential backoff with jitter, for reconnects and channel pauses."""
    return jittered(min(cap, base * (2 ** max(failures - 1, 0))), rng)


def classify(exc: BaseException) -> DeliveryError:
    """Any exception as a classified ``DeliveryError``; the unforeseen counts as transient."""
    if isinstance(exc, DeliveryError):
        return exc
    if isinstance(exc, TimeoutError):
        return TransientError("timed out")
    name = type(exc).__name__
    detail = str(exc)
    return TransientError(f"unexpected {name}: {detail}" if detail else f"unexpected {name}")


def decide(
    notification_id: int,
    attempts: int,
    result: Receipt | BaseException,
    *,
    max_retries: int,
    delays: Sequence[float],
    pause: float = 60.0,
    rng: random.Random | None = None,
) -> Outcome:
    """The row's next state after attempt number ``attempts`` ended with ``result``.

    Transient errors retry after ``delays[attempts-1]`` ± 10 % (or the provider's
    Retry-After) until ``max_retries`` retries are spent; configuration errors release the
    row untouched (the attempt is given back) until the channel's pause ends.
    """
    if isinstance(result, Receipt):
        return Outcome(notification_id, "sent", provider_id=result.provider_id)
    error = classify(result)
    reason = one_line(str(error))
    if isinstance(error, SkipNotification):
        return Outcome(notification_id, "skipped", last_error=reason)
    if isinstance(error, PermanentError):
        return Outcome(notification_id, "failed", last_error=reason, opt_out=error.opt_out)
    if isinstance(error, ConfigurationError):
        return Outcome(
            notification_id,
            "pending",
            delay=pause,
            last_error=one_line(f"channel paused: {reason}"),
            release=True,
        )
    assert isinstance(error, TransientError)
    if attempts > max_retries:
        return Outcome(
            notification_id,
            "failed",
            last_error=one_line(f"gave up after {attempts} attempts: {reason}"),
        )
    if error.retry_after is not None and error.retry_after >= 0:
        delay = error.retry_after
    else:
        delay = jittered(retry_delay(attempts, delays), rng)
    return Outcome(
        notification_id,
        "pending",
        delay=delay,
        last_error=one_line(f"attempt {attempts} failed, retrying: {reason}"),
    )
