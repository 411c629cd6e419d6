"""The scheduler: sleep until the earliest pending ``run_at``, then ring the workers.

It wakes on a NOTIFY (through the listener), on the earliest due time it read from the
database, when a paused channel resumes, and at the latest every poll interval (the
safety net should a NOTIFY ever be lost). The due time is re-read on every wake-up: the
NOTIFY payload carries nothing.
"""

from __future__ import annotations

import contextlib

from pgnotify import queries
from pgnotify.db import DB_ERRORS
from pgnotify.logs import get_logger
from pgnotify.runtime import Runtime
from pgnotify.text import describe_error
from pgnotify.wakeup import Doorbell

# When due rows exist but the workers found none free (another daemon is claiming them,
# or a transaction holds their locks), look again soon rather than at the next poll.
BUSY_RECHECK = 0.5
DB_RETRY = 1.0


def next_wait(due_in: float | None, poll_interval: float, resume_in: float | None = None) -> float:
    """Seconds to sleep given the earliest pending row (seconds from now, or None)."""
    wait = poll_interval
    if due_in is not None:
        wait = min(wait, BUSY_RECHECK if due_in <= 0 else due_in)
    if resume_in is not None:
        wait = min(wait, resume_in)
    return max(wait, 0.0)


class Scheduler:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.log = get_logger(component="scheduler")

    async def run(self) -> None:
        rt = self.rt
        while not rt.stopping.is_set():
            token = rt.changed.token()
            rt.work.ring()
            due_in: float | None = None
            wait = DB_RETRY
            try:
                due_in = await rt.pool.fetchval(queries.NEXT_RUN_AT, rt.pauses.paused())
                wait = next_wait(
                    due_in, rt.settings.NOTIFICATION_POLL_INTERVAL, rt.pauses.next_resume_in()
                )
            except DB_ERRORS as exc:
                rt.db_failed()
                self.log.warning("schedule_read_failed", error=describe_error(exc))
            with contextlib.suppress(Exception):
                await Doorbell.wait(token, wait)
