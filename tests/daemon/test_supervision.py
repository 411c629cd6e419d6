"""A daemon whose core loop dies stops with exit code 1 instead of idling as 'healthy'.

The second test is about the harness itself: every daemon test relies on ``running()``
failing the test when the daemon under it dies, so that promise is tested too.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.daemon.harness import make_settings, running, wait_until


def kill_the_scheduler() -> None:
    """What an unforeseen exception would do to a core loop: end it."""
    (scheduler,) = [t for t in asyncio.all_tasks() if t.get_name() == "scheduler"]
    scheduler.cancel()


async def test_a_dead_core_loop_stops_the_daemon_with_exit_1(clean_db: str, tmp_path: Path) -> None:
    """The supervisor notices the dead loop, stops everything and ``run`` returns 1."""
    async with running(make_settings(clean_db, tmp_path), expect_exit=1) as daemon:
        kill_the_scheduler()
        # It stops by itself; running() then checks that run() returned exactly 1.
        await wait_until(lambda: daemon.rt.stopping.is_set(), timeout=10)


async def test_a_daemon_dying_under_a_test_fails_that_test_at_once(
    clean_db: str, tmp_path: Path
) -> None:
    """``running()`` interrupts the test's block when the daemon exits 1, and says so."""
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"stopped by itself .* exit code 1"):
        async with running(make_settings(clean_db, tmp_path)):
            kill_the_scheduler()
            await asyncio.sleep(60)  # a test waiting for work the dead daemon never does
    # Interrupted when the daemon died, not after the block's own minute.
    assert time.monotonic() - started < 20
