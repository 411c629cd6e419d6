"""The database goes away under a running daemon: it recovers by itself and loses nothing.

Connections are terminated on the shared test server (only this test database's
backends); restarts and a server that is down at start-up use a throw-away cluster this
module starts itself, never the shared server.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgnotify.daemon import Daemon
from pgnotify.migrate import migrate
from tests.daemon.harness import (
    count,
    get_health,
    health_becomes,
    make_settings,
    queue_burst,
    quiet_booking,
    running,
    wait_until,
)
from tests.pgcluster import LocalCluster

pytestmark = pytest.mark.faults

Conn = psycopg.Connection[Any]

DAEMON_BACKENDS = """
from pg_stat_activity
where datname = current_database() and application_name in ('pgnotify', 'pgnotify-listener')
"""
TERMINATE_DAEMON_BACKENDS = "select application_name, pg_terminate_backend(pid)" + DAEMON_BACKENDS


async def daemon_reconnected(admin: psycopg.AsyncConnection[Any]) -> bool:
    """Both the listener and at least one pool connection are back."""
    cur = await admin.execute("select count(distinct application_name)" + DAEMON_BACKENDS)
    row = await cur.fetchone()
    return row == (2,)


class Producer:
    """Queues a few in-app rows every ``interval`` from a thread, through any outage.

    Only statements that returned count as queued: one cut by the outage may or may not
    have committed, so the test checks that *every* row in the table ends sent.
    """

    def __init__(self, dsn: str, booking: Any, interval: float = 0.05) -> None:
        self.dsn, self.booking, self.interval = dsn, booking, interval
        self.queued: list[int] = []
        self._stop = asyncio.Event()

    async def run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(psycopg.OperationalError):
                self.queued += await asyncio.to_thread(self._queue)
            await asyncio.sleep(self.interval)

    def _queue(self) -> list[int]:
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=2) as conn:
            return queue_burst(conn, self.booking, 3, ("inapp",))

    async def queues_more(self, rows: int, timeout: float = 10.0) -> None:
        """Wait until ``rows`` more rows were queued (the database is up and taking them)."""
        target = len(self.queued) + rows
        await wait_until(lambda: len(self.queued) >= target, timeout=timeout)

    def stop(self) -> None:
        self._stop.set()


async def a_new_row_is_delivered(dsn: str, booking: Any, timeout: float = 15.0) -> None:
    """Queue one in-app row now and wait until it is sent."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        (row,) = queue_burst(conn, booking, 1, ("inapp",))
    await wait_until(lambda: count(dsn, "id = %s and status = 'sent'", (row,)), timeout)


async def all_rows_sent(dsn: str, queued: list[int], timeout: float) -> None:
    """Wait until no row is left to send and every ``queued`` row is sent."""

    async def done() -> bool:
        return await count(dsn, "status in ('pending', 'sending')") == 0 and await count(
            dsn, "id = any(%s) and status = 'sent'", (queued,)
        ) == len(queued)

    await wait_until(done, timeout=timeout, interval=0.1)


async def test_terminating_every_daemon_connection_repeatedly_loses_nothing(
    db: Conn, clean_db: str, tmp_path: Path
) -> None:
    booking = quiet_booking(db, phone=None, email=None)
    # A 60 s poll: only the listener (and its reconnect wake-up) brings rows in quickly.
    settings = make_settings(clean_db, tmp_path, NOTIFICATION_POLL_INTERVAL=60)
    terminated: Counter[str] = Counter()
    async with (
        running(settings) as daemon,
        await psycopg.AsyncConnection.connect(clean_db, autocommit=True) as admin,
    ):
        assert daemon.health is not None
        producer = Producer(clean_db, booking)
        producing = asyncio.create_task(producer.run())
        for _ in range(6):
            await asyncio.sleep(0.3)
            cur = await admin.execute(TERMINATE_DAEMON_BACKENDS)
            for name, ok in await cur.fetchall():
                terminated[name] += bool(ok)
            await wait_until(lambda: daemon_reconnected(admin), timeout=10)
        producer.stop()
        await producing
        await all_rows_sent(clean_db, producer.queued, timeout=30)
        await health_becomes(daemon.health.port, 200)
        # The listener is LISTENing again: a new row is woken for, not left to the poll.
        await a_new_row_is_delivered(clean_db, booking, timeout=5)
    assert terminated["pgnotify-listener"] == 6
    assert terminated["pgnotify"] >= 6
    assert len(producer.queued) > 50
    assert db.execute("select count(*) from pgnotify.inbox").fetchone() == (
        len(producer.queued) + 1,
    )


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """A throw-away Postgres this module may restart and stop at will."""
    cluster = LocalCluster().init()
    try:
        cluster.start()
        migrate(cluster.dsn)
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def cluster_db(cluster: LocalCluster) -> Iterator[Conn]:
    try:
        psycopg.connect(cluster.dsn, connect_timeout=2).close()
    except psycopg.OperationalError:
        cluster.start()  # a previous test failed while it was stopped
    with psycopg.connect(cluster.dsn, autocommit=True) as conn:
        conn.execute("truncate pgnotify.inbox, pgnotify.notifications, booking.bookings cascade")
        yield conn


async def test_a_postgres_restart_under_the_daemon_loses_nothing(
    cluster: LocalCluster, cluster_db: Conn, tmp_path: Path
) -> None:
    booking = quiet_booking(cluster_db, phone=None, email=None)
    settings = make_settings(cluster.dsn, tmp_path, NOTIFICATION_POLL_INTERVAL=60)
    async with running(settings) as daemon:
        assert daemon.health is not None
        producer = Producer(cluster.dsn, booking)
        producing = asyncio.create_task(producer.run())
        for _ in range(2):
            await producer.queues_more(15)
            await asyncio.to_thread(cluster.restart)
            # With a 60 s poll, only a restored LISTEN (or its reconnect wake-up) sends it.
            await a_new_row_is_delivered(cluster.dsn, booking)
        await producer.queues_more(15)
        producer.stop()
        await producing
        await all_rows_sent(cluster.dsn, producer.queued, timeout=30)
        await health_becomes(daemon.health.port, 200)


async def test_a_daemon_started_while_postgres_is_down_waits_then_serves(
    cluster: LocalCluster, cluster_db: Conn, tmp_path: Path
) -> None:
    booking = quiet_booking(cluster_db, phone=None, email=None)
    ids = queue_burst(cluster_db, booking, 5, ("inapp",))
    cluster_db.close()
    await asyncio.to_thread(cluster.stop)
    daemon = Daemon(make_settings(cluster.dsn, tmp_path))
    task = asyncio.create_task(daemon.run(install_signals=False))
    try:
        await wait_until(lambda: daemon.health is not None and daemon.health.port, timeout=5)
        assert daemon.health is not None
        body = await health_becomes(daemon.health.port, 503)
        assert body["pool_connected"] is False
        await asyncio.sleep(1.0)
        assert (await get_health(daemon.health.port))[0] == 503
        await asyncio.to_thread(cluster.start)
        await health_becomes(daemon.health.port, 200, timeout=30)
        await all_rows_sent(cluster.dsn, ids, timeout=10)
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 30)
    assert task.result() == 0
