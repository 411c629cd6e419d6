"""Channel pauses after rejected credentials, driven by an injected clock."""

from __future__ import annotations

import pytest

from pgnotify.channels.base import Receipt
from pgnotify.pauses import ChannelPauses


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_paused_channel_is_listed_and_described_as_degraded_until_the_pause_ends() -> None:
    clock = Clock()
    pauses = ChannelPauses(base=30.0, cap=600.0, clock=clock)
    delay = pauses.pause("email", "SMTP 535 bad credentials")
    assert 27.0 <= delay <= 33.0
    assert pauses.paused() == ["email"]
    described = pauses.describe("email")
    assert described["state"] == "degraded"
    assert described["reason"] == "SMTP 535 bad credentials"
    assert described["resumes_in_s"] == round(delay, 1)
    assert pauses.next_resume_in() == pytest.approx(delay)
    assert pauses.describe("sms") == {"state": "ok"}

    clock.now += delay + 0.01
    assert pauses.paused() == []
    assert pauses.describe("email") == {"state": "ok"}
    assert pauses.next_resume_in() is None


def test_sibling_failures_of_one_batch_do_not_lengthen_the_pause() -> None:
    clock = Clock()
    pauses = ChannelPauses(clock=clock)
    first = pauses.pause("email", "535")
    clock.now += 5.0
    assert pauses.pause("email", "535") == pytest.approx(first - 5.0)


def test_repeated_pauses_back_off_exponentially_up_to_the_cap() -> None:
    clock = Clock()
    pauses = ChannelPauses(base=30.0, cap=100.0, clock=clock)
    delays = []
    for _ in range(4):
        delays.append(pauses.pause("sms", "401"))
        clock.now += delays[-1] + 0.01  # the pause ends, the next try fails again
    for delay, base in zip(delays, (30.0, 60.0, 100.0, 100.0), strict=True):
        assert base * 0.9 <= delay <= base * 1.1


def test_a_success_clears_the_backoff() -> None:
    clock = Clock()
    pauses = ChannelPauses(base=30.0, clock=clock)
    clock.now += pauses.pause("sms", "401") + 0.01
    clock.now += pauses.pause("sms", "401") + 0.01
    pauses.observe("sms", Receipt(None))  # a send went through
    assert 27.0 <= pauses.pause("sms", "401") <= 33.0


def test_channels_pause_independently_and_the_earliest_resume_is_reported() -> None:
    clock = Clock()
    pauses = ChannelPauses(base=30.0, clock=clock)
    pauses.pause("email", "535")
    clock.now += 10.0
    sms = pauses.pause("sms", "401")
    assert pauses.paused() == ["email", "sms"]
    resume = pauses.next_resume_in()
    assert resume is not None
    assert resume < sms
