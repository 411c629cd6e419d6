"""The retry policy in one pure module: jitter, backoff, classification and next states."""

from __future__ import annotations

import random

import pytest

from pgnotify.channels.base import Receipt
from pgnotify.errors import (
    ConfigurationError,
    PermanentError,
    SkipNotification,
    TransientError,
)
from pgnotify.outcome import (
    JITTER,
    Outcome,
    backoff,
    classify,
    decide,
    jittered,
    retry_delay,
)
from pgnotify.text import one_line

DELAYS = (60.0, 300.0, 900.0)


def test_jitter_stays_within_ten_percent_and_uses_the_whole_range() -> None:
    rng = random.Random(7)
    draws = [jittered(100.0, rng) for _ in range(2000)]
    assert all(90.0 <= d <= 110.0 for d in draws)
    assert min(draws) < 92.0 and max(draws) > 108.0  # spread, not a constant
    assert JITTER == 0.10


def test_jitter_of_zero_is_zero_and_never_negative() -> None:
    rng = random.Random(1)
    assert jittered(0.0, rng) == 0.0
    assert all(jittered(0.001, rng) >= 0.0 for _ in range(100))


@pytest.mark.parametrize(
    ("attempts", "expected"),
    [(0, 60.0), (1, 60.0), (2, 300.0), (3, 900.0), (4, 900.0), (50, 900.0)],
)
def test_retry_delay_follows_the_list_and_the_last_delay_repeats(
    attempts: int, expected: float
) -> None:
    assert retry_delay(attempts, DELAYS) == expected


def test_retry_delay_without_delays_is_immediate() -> None:
    assert retry_delay(3, ()) == 0.0


@pytest.mark.parametrize(
    ("failures", "base"),
    [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (7, 30.0), (40, 30.0)],
)
def test_backoff_doubles_per_failure_up_to_the_cap_with_jitter(failures: int, base: float) -> None:
    rng = random.Random(failures)
    for _ in range(200):
        assert base * 0.9 <= backoff(failures, 0.5, 30.0, rng) <= base * 1.1


def test_one_line_flattens_whitespace_and_bounds_the_length() -> None:
    assert one_line("550 5.1.1\r\n  no such\tuser \n") == "550 5.1.1 no such user"
    long = one_line("x" * 5000)
    assert len(long) == 1000
    assert long.endswith("…")
    assert one_line("a b c", limit=3) == "a …"
    assert one_line("abc", limit=3) == "abc"


def test_classify_keeps_classified_errors_and_makes_the_unforeseen_transient() -> None:
    permanent = PermanentError("SMTP 550 no such user")
    assert classify(permanent) is permanent
    assert str(classify(TimeoutError())) == "timed out"
    assert isinstance(classify(TimeoutError()), TransientError)
    unforeseen = classify(KeyError("locale"))
    assert isinstance(unforeseen, TransientError)
    assert str(unforeseen) == "unexpected KeyError: 'locale'"
    assert str(classify(RuntimeError())) == "unexpected RuntimeError"


def decide_with(
    attempts: int, result: Receipt | BaseException, *, max_retries: int = 3, pause: float = 60.0
) -> Outcome:
    return decide(
        42,
        attempts,
        result,
        max_retries=max_retries,
        delays=DELAYS,
        pause=pause,
        rng=random.Random(3),
    )


def test_a_receipt_is_sent_with_its_provider_id() -> None:
    assert decide_with(1, Receipt("<pgnotify.42@x>")) == Outcome(
        42, "sent", provider_id="<pgnotify.42@x>"
    )


@pytest.mark.parametrize("attempts", [1, 2, 3])
def test_a_transient_error_is_retried_after_its_delay_with_jitter(attempts: int) -> None:
    outcome = decide_with(attempts, TransientError("SMTP 451 try later"))
    assert outcome.status == "pending"
    base = DELAYS[attempts - 1]
    assert outcome.delay is not None
    assert base * 0.9 <= outcome.delay <= base * 1.1
    assert outcome.last_error == f"attempt {attempts} failed, retrying: SMTP 451 try later"
    assert outcome.release is False


def test_spent_retries_fail_the_row_saying_how_many_attempts_were_made() -> None:
    outcome = decide_with(4, TransientError("SMTP 451 mailbox busy"))
    assert outcome.status == "failed"
    assert outcome.last_error == "gave up after 4 attempts: SMTP 451 mailbox busy"
    assert outcome.delay is None


def test_no_retries_allowed_means_the_first_transient_error_fails() -> None:
    outcome = decide_with(1, TransientError("timeout"), max_retries=0)
    assert outcome.status == "failed"
    assert outcome.last_error == "gave up after 1 attempts: timeout"


def test_retry_after_from_the_provider_replaces_the_configured_delay() -> None:
    assert decide_with(1, TransientError("429", retry_after=42.0)).delay == 42.0
    assert decide_with(1, TransientError("429", retry_after=0.0)).delay == 0.0


def test_a_permanent_error_fails_at_once_and_carries_an_opt_out() -> None:
    outcome = decide_with(1, PermanentError("Twilio 21610 unsubscribed", opt_out=True))
    assert outcome == Outcome(42, "failed", last_error="Twilio 21610 unsubscribed", opt_out=True)


def test_a_configuration_error_releases_the_row_for_the_pause_giving_the_attempt_back() -> None:
    outcome = decide_with(2, ConfigurationError("SMTP 535 bad credentials"), pause=45.0)
    assert outcome == Outcome(
        42,
        "pending",
        delay=45.0,
        last_error="channel paused: SMTP 535 bad credentials",
        release=True,
    )


def test_a_configuration_error_is_released_even_when_retries_are_spent() -> None:
    outcome = decide_with(9, ConfigurationError("SMTP 535"), pause=30.0)
    assert (outcome.status, outcome.release) == ("pending", True)


def test_skip_is_final_and_says_why() -> None:
    outcome = decide_with(1, SkipNotification("booking is cancelled now; reminder not sent"))
    assert outcome == Outcome(
        42, "skipped", last_error="booking is cancelled now; reminder not sent"
    )


def test_an_unforeseen_exception_is_retried_not_lost() -> None:
    outcome = decide_with(1, ValueError("bad\nvalue"))
    assert outcome.status == "pending"
    assert outcome.last_error == "attempt 1 failed, retrying: unexpected ValueError: bad value"
