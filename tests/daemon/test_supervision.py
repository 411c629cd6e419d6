"""A daemon whose core loop dies stops with exit code 1 instead of idling as 'healthy'."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pgnotify.daemon import Daemon
from tests.daemon.harness import make_settings, wait_until


async def test_a_dead_core_loop_stops_the_daemon_with_exit_1(clean_db: str, tmp_path: Path) -> None:
    daemon = Daemon(make_settings(clean_db, tmp_path))
    run = asyncio.create_task(daemon.run(install_signals=False))
    await wait_until(lambda: daemon.listener.connected, timeout=10)
    (scheduler,) = [t for t in asyncio.all_tasks() if t.get_name() == "scheduler"]
    scheduler.cancel()  # what an unforeseen exception would do to it
    assert await asyncio.wait_for(run, 30) == 1
