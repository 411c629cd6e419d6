"""When the scheduler wakes and how often expired leases are looked for: pure arithmetic."""

from __future__ import annotations

import pytest

from pgnotify.maintenance import rescue_interval
from pgnotify.scheduler import BUSY_RECHECK, MIN_POLL, next_poll, next_wait


def test_with_nothing_pending_the_scheduler_sleeps_one_poll_interval() -> None:
    assert next_wait(None, 30.0) == 30.0


def test_a_row_due_before_the_poll_is_woken_for_at_its_due_time() -> None:
    assert next_wait(2.0, 30.0) == 2.0


def test_a_row_due_after_the_poll_waits_only_until_the_poll() -> None:
    assert next_wait(3600.0, 30.0) == 30.0


@pytest.mark.parametrize("due_in", [0.0, -0.001, -120.0])
def test_rows_already_due_but_not_taken_are_looked_at_again_soon(due_in: float) -> None:
    # Workers found them locked or were busy: recheck shortly, not at the next poll.
    assert next_wait(due_in, 30.0) == BUSY_RECHECK
    assert BUSY_RECHECK < 1.0


def test_rows_already_due_never_delay_a_shorter_poll() -> None:
    assert next_wait(-5.0, 0.2) == 0.2


def test_a_channel_resuming_from_a_pause_wakes_the_scheduler() -> None:
    assert next_wait(None, 30.0, resume_in=4.0) == 4.0
    assert next_wait(2.0, 30.0, resume_in=4.0) == 2.0


def test_the_wait_is_never_negative() -> None:
    assert next_wait(None, 30.0, resume_in=-1.0) == 0.0


@pytest.mark.parametrize(
    ("lease", "interval"),
    [(120.0, 30.0), (60.0, 15.0), (3.0, 0.75), (1.0, 0.5), (0.1, 0.5), (3600.0, 30.0)],
)
def test_expired_leases_are_looked_for_four_times_a_lease_within_bounds(
    lease: float, interval: float
) -> None:
    assert rescue_interval(lease) == interval


@pytest.mark.parametrize("lease", [2.0, 3.0, 10.0, 120.0, 600.0])
def test_a_dead_daemons_rows_return_within_one_and_a_half_leases(lease: float) -> None:
    # A row claimed just before a crash expires after `lease`; the next sweep finds it
    # at most one interval later.
    assert lease + rescue_interval(lease) <= 1.5 * lease


# -- the adaptive poll, when the operator turned the wake-up NOTIFY off --------------------


def test_without_notify_the_first_poll_and_a_poll_after_work_come_soon() -> None:
    assert next_poll(None, False, 10.0) == MIN_POLL
    assert next_poll(5.0, True, 10.0) == MIN_POLL


def test_without_notify_an_idle_poll_doubles_up_to_the_poll_interval() -> None:
    waits = [MIN_POLL]
    for _ in range(10):
        waits.append(next_poll(waits[-1], False, 1.0))
    assert waits[:5] == [MIN_POLL, 0.1, 0.2, 0.4, 0.8]
    assert waits[5:] == [1.0] * 6


def test_a_poll_interval_below_the_minimum_poll_wins() -> None:
    assert next_poll(None, True, 0.01) == 0.01
