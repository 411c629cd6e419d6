"""The database goes away under a running daemon: it recovers by itself and loses nothing.

Connections are terminated on the shared test server (only this test database's
backends): all at once, the listener only, the pool only. A TCP proxy between daemon and
server goes half-open (``proxy.py``): the listener's probe notices, and the daemon heals
through new connections once the path does. Restarts and a server that is down at
start-up use a throw-away cluster this module starts itself, never the shared server.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgnotify.daemon import Daemon
from pgnotify.migrate import migrate
from tests.daemon.harness import (
    count,
    count_reaches,
    env_for,
    get_health,
    health_becomes,
    logged,
    logged_at,
    make_settings,
    message_id_counts,
    queue_burst,
    quiet_booking,
    running,
    smtp_settings,
    spawn,
    stop_process,
    wait_until,
)
from tests.devcluster import LocalCluster, free_port
from tests.faults.proxy import TcpProxy
from tests.peers.smtp import SmtpPeer

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
        await a_new_row_is_delivered(clean_db, booking, timeout=10)
    assert terminated["pgnotify-listener"] == 6
    assert terminated["pgnotify"] >= 6
    assert len(producer.queued) > 50
    assert db.execute("select count(*) from pgnotify.inbox").fetchone() == (
        len(producer.queued) + 1,
    )


# -- one kind of connection at a time, and a half-open path ----------------------------------

PROBE_INTERVAL = 0.5
# The probe (every 0.5 s, 0.5 s to answer) notices a lost or half-open listener within a
# second or so; without it a half-open path goes unnoticed for minutes (TCP's timeouts).
# The bound sits between the two, generous for a loaded machine: mechanism, not speed.
NOTICED_WITHIN = 10.0
WORKERS = 3
BATCH = 20


def backends(db: Conn, application: str) -> set[int]:
    """Pids of this database's backends opened by the daemon as ``application``."""
    rows = db.execute(
        "select pid from pg_stat_activity where datname = current_database()"
        " and application_name = %s",
        (application,),
    ).fetchall()
    return {r[0] for r in rows}


def terminate(db: Conn, pids: set[int]) -> None:
    db.execute("select pg_terminate_backend(pid) from unnest(%s::int[]) as pid", (list(pids),))


def daemon_env(dsn: str, tmp_path: Path, health_port: int, **overrides: Any) -> dict[str, str]:
    return env_for(
        dsn,
        tmp_path / "outbox",
        NOTIFICATION_HEALTH_ADDR=f"127.0.0.1:{health_port}",
        # A 60 s poll: rows queued after an outage go out quickly only if LISTEN is back.
        NOTIFICATION_POLL_INTERVAL=60,
        NOTIFICATION_PROBE_INTERVAL=PROBE_INTERVAL,
        NOTIFICATION_WORKERS=WORKERS,
        NOTIFICATION_BATCH_SIZE=BATCH,
        **overrides,
    )


def stop_with_sigterm(proc: subprocess.Popen[bytes]) -> None:
    """The daemon was never restarted, and still shuts down cleanly."""
    assert proc.poll() is None, "the daemon died"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0


async def test_terminating_only_the_listener_during_a_burst_loses_nothing(
    db: Conn, clean_db: str, tmp_path: Path
) -> None:
    booking = quiet_booking(db, phone=None, email=None)
    health, log = free_port(), tmp_path / "daemon.log"
    proc = spawn(daemon_env(clean_db, tmp_path, health), log)
    terminated_at: list[float] = []
    try:
        await health_becomes(health, 200)
        pool = backends(db, "pgnotify")
        producer = Producer(clean_db, booking)
        producing = asyncio.create_task(producer.run())
        for _ in range(4):
            await producer.queues_more(6)
            listener = backends(db, "pgnotify-listener")
            assert len(listener) == 1
            terminated_at.append(time.time())
            terminate(db, listener)
            await wait_until(lambda: backends(db, "pgnotify-listener") - listener, timeout=10)  # noqa: B023
        await producer.queues_more(6)
        producer.stop()
        await producing
        await all_rows_sent(clean_db, producer.queued, timeout=30)
        await health_becomes(health, 200)
        await a_new_row_is_delivered(clean_db, booking, timeout=10)
        assert pool <= backends(db, "pgnotify"), "a pool connection was lost too"
        stop_with_sigterm(proc)
    finally:
        stop_process(proc)
    lost = logged(log, "listener_lost")
    assert len(lost) == 4
    assert len(logged(log, "listener_restored")) == 4
    noticed = [logged_at(e) - t for e, t in zip(lost, terminated_at, strict=True)]
    print(f"listener terminated: noticed after {[round(n, 3) for n in noticed]} s")
    assert all(n <= NOTICED_WITHIN for n in noticed), lost
    assert not logged(log, "claim_failed") and not logged(log, "record_failed")


def record_waiting_on(db: Conn, locker: int) -> set[int]:
    """Pids of the daemon's pool backends blocked by the ``locker`` backend's row locks."""
    rows = db.execute(
        "select pid from pg_stat_activity where datname = current_database()"
        " and application_name = 'pgnotify' and %s = any(pg_blocking_pids(pid))",
        (locker,),
    ).fetchall()
    return {r[0] for r in rows}


async def terminate_a_record_in_flight(db: Conn, dsn: str) -> None:
    """Cut the daemon's connection while it records outcomes: its record must be retried.

    Emails being sent are locked (``for update``): recording their outcomes then waits on
    the lock, and the waiting backend is terminated. Only the record statement writes to
    such rows (the claim skips locked rows; in-app delivery touches in-app rows only).
    """
    with psycopg.connect(dsn) as locker:
        pid = locker.info.backend_pid

        def lock_emails_being_sent() -> bool:
            return bool(
                locker.execute(
                    "select id from pgnotify.notifications"
                    " where status = 'sending' and channel = 'email' for update skip locked"
                ).fetchall()
            )

        await wait_until(lock_emails_being_sent, timeout=10, interval=0.005)
        blocked = await wait_until(lambda: record_waiting_on(db, pid), timeout=10, interval=0.01)
        terminate(db, blocked)
        locker.rollback()


async def test_terminating_only_the_pool_connections_during_a_burst_loses_nothing(
    db: Conn, clean_db: str, tmp_path: Path, smtp_server: SmtpPeer
) -> None:
    """Claims and records cut mid-flight are redone on new connections: none lost or doubled."""
    booking = quiet_booking(db, phone=None)
    health, log = free_port(), tmp_path / "daemon.log"
    proc = spawn(daemon_env(clean_db, tmp_path, health, **smtp_settings(smtp_server)), log)
    smtp_server.stall_next(0.005, count=2000)  # so the burst lasts through the terminations
    try:
        await health_becomes(health, 200)
        listener = backends(db, "pgnotify-listener")
        ids = queue_burst(db, booking, 400, ("email", "inapp"))
        # First a termination aimed at a record (chance alone may never hit one)...
        await terminate_a_record_in_flight(db, clean_db)
        # ...then four at whatever the pool is doing.
        for _ in range(4):
            # Some progress between terminations: each one lands on batches in flight.
            await wait_until(sent_at_least(clean_db, await count(clean_db, "status = 'sent'") + 40))
            pool = backends(db, "pgnotify")
            terminate(db, pool)
            await wait_until(lambda: backends(db, "pgnotify") - pool, timeout=10)  # noqa: B023
        assert await count(clean_db, "status = 'sent'") < len(ids), "the burst ended too soon"
        await count_reaches(clean_db, len(ids), "status = 'sent'", timeout=30)
        await health_becomes(health, 200)
        assert backends(db, "pgnotify-listener") == listener, "the listener was lost too"
        await a_new_row_is_delivered(clean_db, booking, timeout=10)
        stop_with_sigterm(proc)
    finally:
        stop_process(proc)
    assert not logged(log, "listener_lost")
    # The record cut above failed and was retried (on a new connection)...
    assert logged(log, "record_failed"), "no record failed: the retry path never ran"
    # ...and every outcome landed once: a failed claim rolled back, a failed record was
    # retried, so no email was handed over twice and none was left behind.
    received = message_id_counts(smtp_server.messages)
    assert len(received) == 400
    assert set(received.values()) == {1}
    assert db.execute(
        "select count(*), count(distinct notification_id) from pgnotify.inbox"
    ).fetchone() == (401, 401)


def sent_at_least(dsn: str, rows: int) -> Callable[[], Awaitable[bool]]:
    async def reached() -> bool:
        return await count(dsn, "status = 'sent'") >= rows

    return reached


def through(proxy: TcpProxy, dsn: str) -> str:
    """``dsn`` with the proxy as its host and port."""
    return make_conninfo(dsn, host=proxy.host, port=str(proxy.port))


async def test_a_half_open_path_to_postgres_is_noticed_then_healed_without_a_restart(
    db: Conn, clean_db: str, tmp_path: Path, smtp_server: SmtpPeer
) -> None:
    target = conninfo_to_dict(clean_db)
    proxy = TcpProxy(str(target.get("host") or "127.0.0.1"), int(target.get("port") or 5432))
    proxy.start()
    booking = quiet_booking(db, phone=None)
    health, log = free_port(), tmp_path / "daemon.log"
    env = daemon_env(
        through(proxy, clean_db),
        tmp_path,
        health,
        NOTIFICATION_DB_TIMEOUT=1.0,
        NOTIFICATION_LEASE_SECONDS=3.0,
        NOTIFICATION_SEND_TIMEOUT=1.0,
        **smtp_settings(smtp_server),
    )
    smtp_server.stall_next(0.005, count=2000)
    proc = spawn(env, log)
    try:
        await health_becomes(health, 200)
        ids = queue_burst(db, booking, 300, ("email", "inapp"))
        await wait_until(sent_at_least(clean_db, 100), timeout=10)
        cut_at, cut = time.time(), time.monotonic()
        proxy.stop_forwarding()
        await health_becomes(health, 503, timeout=10)
        noticed = time.monotonic() - cut
        # Cut off for longer than a query timeout and a lease: nothing crashes meanwhile.
        await asyncio.sleep(3.0)
        assert (await get_health(health))[0] == 503
        assert proc.poll() is None
        opened_before = len(proxy.upstream_ports)
        healed = time.monotonic()
        proxy.resume_forwarding()
        await health_becomes(health, 200, timeout=30)
        recovered = time.monotonic() - healed
        await count_reaches(clean_db, len(ids), "status = 'sent'", timeout=30)
        await a_new_row_is_delivered(clean_db, booking, timeout=10)
        # The daemon works through connections it opened after the path healed.
        fresh = set(proxy.upstream_ports[opened_before:])
        apps = db.execute(
            "select application_name, client_port from pg_stat_activity"
            " where datname = current_database() and application_name like 'pgnotify%%'"
        ).fetchall()
        assert {app for app, port in apps if port in fresh} == {"pgnotify", "pgnotify-listener"}
        stop_with_sigterm(proc)
    finally:
        stop_process(proc)
        proxy.stop()
    lost = logged(log, "listener_lost")
    assert lost and "probe timed out" in lost[0]["reason"], lost
    # Every failure names its error, timeouts (which carry no message) included.
    failures = [e for e in logged(log) if "error" in e]
    assert failures and all(e["error"] for e in failures), failures
    detected = logged_at(lost[0]) - cut_at
    assert detected <= NOTICED_WITHIN, detected
    received = message_id_counts(smtp_server.messages)
    assert len(received) == 300
    duplicates = sum(n - 1 for n in received.values())
    print(
        f"half-open: listener_lost after {detected:.2f}s, health 503 after {noticed:.2f}s,"
        f" 200 again {recovered:.2f}s after the path healed; {duplicates} duplicate emails"
    )
    # Only outcomes that could not be recorded while cut off (leases ran out) go twice.
    assert duplicates <= WORKERS * BATCH


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
