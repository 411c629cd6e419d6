"""The scheduler: sleep until the earliest pending ``run_at``, then ring the workers.

It wakes on a NOTIFY (through the listener), on the earliest due time it read from the
database, when a paused channel resumes, and at the latest every poll interval (the
safety net should a NOTIFY ever be lost). The due time is re-read on every wake-up: the
NOTIFY payload carries nothing.

When the operator turned the wake-up NOTIFY off (``pgnotify.settings.wakeup_notify``, read
with the due time on every wake-up), nothing announces new rows, so the scheduler polls,
faster while the workers find work (``next_poll``).
"""

from __future__ import annotations

import contextlib
import time

from pgnotify import queries
from pgnotify.db import DB_ERRORS
from pgnotify.logs import get_logger
from pgnotify.runtime import Runtime
from pgnotify.text import describe_error
from pgnotify.wakeup import wait_event

# When due rows exist but the workers found none free (another daemon is claiming them,
# or a transaction holds their locks), look again soon rather than at the next poll.
BUSY_RECHECK = 0.5
DB_RETRY = 1.0
# Without NOTIFY: how soon to look again after the workers found work.
MIN_POLL = 0.05


def next_wait(due_in: float | None, poll_interval: float, resume_in: float | None = None) -> float:
    """Seconds to sleep given the earliest pending row (seconds from now, or None)."""
    wait = poll_interval
    if due_in is not None:
        wait = min(wait, BUSY_RECHECK if due_in <= 0 else due_in)
    if resume_in is not None:
        wait = min(wait, resume_in)
    return max(wait, 0.0)


def next_poll(previous: float | None, found_work: bool, poll_interval: float) -> float:
    """Seconds until the next poll when wake-ups are off: ``MIN_POLL`` after work was
    found (or on the first poll), else twice the previous wait, at most the interval."""
    if found_work or previous is None:
        return min(MIN_POLL, poll_interval)
    return min(previous * 2, poll_interval)


async def schedule(rt: Runtime) -> None:
    """Ring the workers, then sleep until the next reason to look; until the daemon stops."""
    log = get_logger(component="scheduler")
    poll: float | None = None  # the adaptive poll's last wait, while wake-ups are off
    rung_at = 0.0
    while not rt.stopping.is_set():
        token = rt.changed.token()
        # Did a worker find work since the last ring? (They loop on their own meanwhile.)
        found = (rt.stats.last_work_at or 0.0) >= rung_at
        rung_at = time.time()
        rt.work.ring()
        wait = DB_RETRY
        try:
            row = await rt.pool.fetchrow(queries.NEXT_RUN_AT, rt.pauses.paused())
            interval = rt.settings.NOTIFICATION_POLL_INTERVAL
            wait = next_wait(row["due_in"] if row else None, interval, rt.pauses.next_resume_in())
            notify = row is None or bool(row["wakeup_notify"])
            if notify != (poll is None):
                log.info("wakeup_mode", notify=notify, polling=not notify)
            if notify:
                poll = None
            else:
                poll = next_poll(poll, found, interval)
                wait = min(wait, poll)
        except DB_ERRORS as exc:
            rt.stats.db_ok = False
            log.warning("schedule_read_failed", error=describe_error(exc))
        with contextlib.suppress(Exception):
            await wait_event(token, wait)
