"""Small maintenance loops, each with one job and one interval.

- ``rescue_leases``: rows left in ``sending`` by a dead daemon go back to pending.
- ``purge_retention``: finished rows older than ``NOTIFICATION_RETENTION_DAYS`` go, in
  small batches, every ``NOTIFICATION_PURGE_INTERVAL`` seconds (hourly by default), and
  so do the in-app messages read and older than that (unread ones stay).
- ``watchdog``: tells systemd we are alive, but only while the database answers.
"""

from __future__ import annotations

import asyncio

from pgnotify import queries
from pgnotify.db import DB_ERRORS
from pgnotify.logs import get_logger
from pgnotify.runtime import Runtime
from pgnotify.systemd import SystemdNotifier
from pgnotify.text import describe_error
from pgnotify.wakeup import wait_event

PURGE_BATCH = 5000
PURGE_FIRST_DELAY = 60.0
PURGE_RETRY_DELAY = 300.0


def rescue_interval(lease_seconds: float) -> float:
    """Look for expired leases a few times per lease, between 0.5 s and 30 s."""
    return min(30.0, max(0.5, lease_seconds / 4))


async def rescue_leases(rt: Runtime) -> None:
    log = get_logger(component="lease_rescuer")
    interval = rescue_interval(rt.settings.NOTIFICATION_LEASE_SECONDS)
    while not await wait_event(rt.stopping, interval):
        try:
            rows = await rt.pool.fetch(
                queries.RESCUE_EXPIRED_LEASES,
                rt.settings.NOTIFICATION_MAX_RETRIES,
                list(rt.unrecorded),
            )
        except DB_ERRORS as exc:
            log.warning("lease_rescue_failed", error=describe_error(exc))
            continue
        if rows:
            log.warning("leases_expired", count=len(rows), ids=[r["id"] for r in rows])


async def purge_retention(rt: Runtime) -> None:
    log = get_logger(component="retention")
    days = rt.settings.NOTIFICATION_RETENTION_DAYS
    interval = rt.settings.NOTIFICATION_PURGE_INTERVAL
    # The first run comes shortly after the start (not a full interval later), so a
    # daemon restarted more often than the interval still purges.
    delay = min(PURGE_FIRST_DELAY, interval)
    while not await wait_event(rt.stopping, delay):
        delay = interval
        total = inbox = 0
        try:
            total = await _purge_in_batches(rt, queries.PURGE_FINISHED, days)
            inbox = await _purge_in_batches(rt, queries.PURGE_READ_INBOX, days)
        except DB_ERRORS as exc:
            log.warning("purge_failed", error=describe_error(exc))
            delay = min(PURGE_RETRY_DELAY, interval)
        if total or inbox:
            log.info("purged", count=total, inbox_count=inbox, older_than_days=days)


async def _purge_in_batches(rt: Runtime, statement: str, days: int) -> int:
    """Run a purge statement until it deletes less than a batch; the count it deleted."""
    total = 0
    while not rt.stopping.is_set():
        deleted = await rt.pool.fetchval(statement, days, PURGE_BATCH)
        total += int(deleted or 0)
        if not deleted or deleted < PURGE_BATCH:
            break
        await asyncio.sleep(0.1)  # let other work in between batches
    return total


async def watchdog(rt: Runtime, notifier: SystemdNotifier) -> None:
    interval = notifier.watchdog_interval or 10.0
    timeout = max(1.0, interval / 2)
    while True:
        try:
            async with asyncio.timeout(timeout):
                await rt.pool.fetchval(queries.PING)
            rt.stats.db_ok = True
            if notifier.watchdog_interval:
                notifier.watchdog()
        except DB_ERRORS as exc:
            rt.stats.db_ok = False
            get_logger(component="watchdog").warning("db_unreachable", error=describe_error(exc))
        if await wait_event(rt.stopping, interval):
            return
