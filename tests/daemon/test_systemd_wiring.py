"""The systemd wiring of a real ``pgnotify run``, seen from a NOTIFY_SOCKET the test holds.

systemd's side of ``Type=notify`` and ``WatchdogSec=`` is a unix datagram socket whose
address it passes in ``$NOTIFY_SOCKET`` (and the watchdog deadline in ``$WATCHDOG_USEC``);
the test binds one in the abstract namespace and records every datagram the daemon sends.
A TCP proxy (``tests/faults/proxy.py``) between the daemon and Postgres takes one of its
connections away: the LISTEN connection to show that READY waits for it, the pool to show
that the watchdog is pinged only while the database answers.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.daemon.harness import env_for, logged, spawn, stop_process, wait_until
from tests.faults.proxy import TcpProxy

Conn = psycopg.Connection[Any]


@dataclass(frozen=True)
class Datagram:
    """One sd_notify message: its ``KEY=value`` lines, and when it arrived."""

    fields: dict[str, str]
    monotonic: float


class NotifySocket:
    """A unix datagram socket standing in for systemd's; records what arrives, in order."""

    def __init__(self) -> None:
        self.name = f"pgnotify-test-{uuid.uuid4().hex}"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind("\0" + self.name)  # abstract: no path length or cleanup to mind
        self._sock.settimeout(0.1)
        self._lock = threading.Lock()
        self._received: list[Datagram] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._read, name="notify-socket", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        """The value of ``$NOTIFY_SOCKET`` (``@`` marks the abstract namespace)."""
        return "@" + self.name

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self._lock:
                self._received.append(Datagram(fields, time.monotonic()))

    def received(self, key: str | None = None) -> list[Datagram]:
        """Every datagram so far (those carrying ``key``), oldest first."""
        with self._lock:
            return [d for d in self._received if key is None or key in d.fields]

    def close(self) -> None:
        self._closed.set()
        self._thread.join(5)
        self._sock.close()


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    sock = NotifySocket()
    yield sock
    sock.close()


@pytest.fixture
def pg_proxy(clean_db: str) -> Iterator[TcpProxy]:
    """A TCP proxy in front of the test's Postgres server."""
    info = conninfo_to_dict(clean_db)
    proxy = TcpProxy(str(info.get("host") or "127.0.0.1"), int(info.get("port") or 5432)).start()
    yield proxy
    proxy.stop()


def through(proxy: TcpProxy, dsn: str) -> str:
    """``dsn`` with its host and port replaced by the proxy's."""
    info = conninfo_to_dict(dsn)
    info.update(host=proxy.host, port=str(proxy.port))
    return make_conninfo("", **info)  # type: ignore[arg-type]


def backends(db: Conn, application: str) -> int:
    """How many of this database's backends the daemon opened as ``application``."""
    row = db.execute(
        "select count(*) from pg_stat_activity"
        " where datname = current_database() and application_name = %s",
        (application,),
    ).fetchone()
    return int(row[0]) if row else 0


def log_tail(log: Path, chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"


async def ready(notify_socket: NotifySocket, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Wait for READY=1; a failure shows what the daemon logged meanwhile."""
    try:
        await wait_until(lambda: notify_socket.received("READY"), timeout=20)
    except AssertionError:
        raise AssertionError(
            f"no READY=1 (daemon exit: {proc.poll()}); its log:\n{log_tail(log)}"
        ) from None


def stop_with_sigterm(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(15)


async def test_ready_is_sent_only_once_the_listen_connection_is_up(
    db: Conn, clean_db: str, tmp_path: Path, notify_socket: NotifySocket, pg_proxy: TcpProxy
) -> None:
    """While LISTEN cannot connect, the pool is up and no READY=1 goes out; it follows LISTEN.

    The LISTEN connection goes through a proxy that holds new connections; the pool
    connects directly. A READY sent before LISTEN (or regardless of it) arrives while the
    proxy still holds the listener, which is what this test refuses.
    """
    pg_proxy.stop_forwarding()
    env = env_for(
        clean_db,
        tmp_path / "outbox",
        LISTEN_DATABASE_URL=through(pg_proxy, clean_db),
        NOTIFY_SOCKET=notify_socket.address,
        NOTIFICATION_HEALTH_ADDR="",
    )
    log = tmp_path / "daemon.log"
    proc = spawn(env, log)
    try:
        # The pool is up: from here the daemon only waits for its listener.
        await wait_until(lambda: backends(db, "pgnotify") > 0, timeout=20)
        await asyncio.sleep(3.0)  # well within the daemon's 10 s fallback for a slow LISTEN
        assert proc.poll() is None, "the daemon died"
        assert notify_socket.received("READY") == [], "READY=1 before the LISTEN connection"
        assert backends(db, "pgnotify-listener") == 0

        held_until = time.monotonic()
        pg_proxy.resume_forwarding()
        (ready,) = await wait_until(lambda: notify_socket.received("READY"), timeout=15)
        assert ready.fields["READY"] == "1"
        assert ready.monotonic > held_until
        assert backends(db, "pgnotify-listener") == 1
        assert stop_with_sigterm(proc) == 0
    finally:
        stop_process(proc)
    # In the daemon's own order of events, too: listening first, then ready.
    # (``listener_restored`` when the proxy made its first attempts fail.)
    listening = ("listener_connected", "listener_restored")
    events = [e["event"] for e in logged(log) if e["event"] in (*listening, "ready")]
    assert events in ([listening[0], "ready"], [listening[1], "ready"])
    assert logged(log, "ready")[0]["listening"] is True


async def test_sigterm_sends_stopping_before_the_daemon_exits(
    clean_db: str, tmp_path: Path, notify_socket: NotifySocket
) -> None:
    """SIGTERM is answered with STOPPING=1 at once; READY=1 came before it, exactly once."""
    env = env_for(
        clean_db,
        tmp_path / "outbox",
        NOTIFY_SOCKET=notify_socket.address,
        NOTIFICATION_HEALTH_ADDR="",
    )
    log = tmp_path / "daemon.log"
    proc = spawn(env, log)
    try:
        await ready(notify_socket, proc, log)
        await asyncio.sleep(0.5)
        assert notify_socket.received("STOPPING") == []
        assert stop_with_sigterm(proc) == 0
    finally:
        stop_process(proc)
    messages = notify_socket.received()
    readies = [i for i, d in enumerate(messages) if "READY" in d.fields]
    stoppings = [i for i, d in enumerate(messages) if "STOPPING" in d.fields]
    assert len(readies) == 1 and len(stoppings) == 1, messages
    assert readies[0] < stoppings[0]
    assert messages[stoppings[0]].fields["STOPPING"] == "1"


async def test_the_watchdog_is_pinged_only_while_the_database_answers(
    clean_db: str, tmp_path: Path, notify_socket: NotifySocket, pg_proxy: TcpProxy
) -> None:
    """WATCHDOG=1 arrives every half deadline; it stops while the pool's path is dead.

    The pool goes through the proxy, the LISTEN connection does not, so only the database
    behind the pool stops answering (half-open: nothing crosses, nothing closes). The pings
    come back once the path heals, without a restart.
    """
    env = env_for(
        through(pg_proxy, clean_db),
        tmp_path / "outbox",
        LISTEN_DATABASE_URL=clean_db,
        NOTIFY_SOCKET=notify_socket.address,
        WATCHDOG_USEC="2000000",  # ping every second, each ping bounded by one second
        NOTIFICATION_HEALTH_ADDR="",
    )
    log = tmp_path / "daemon.log"
    proc = spawn(env, log)
    try:
        await ready(notify_socket, proc, log)
        await wait_until(lambda: len(notify_socket.received("WATCHDOG")) >= 3, timeout=10)

        pg_proxy.stop_forwarding()
        # A ping already answered may still be on its way: give it time to land.
        await asyncio.sleep(2.0)
        pings = len(notify_socket.received("WATCHDOG"))
        # Longer than one failed ping's round (bound, cancel, interval: about 5 s here).
        await asyncio.sleep(6.0)
        assert len(notify_socket.received("WATCHDOG")) == pings, (
            "WATCHDOG=1 sent while the database did not answer"
        )
        assert logged(log, "db_unreachable"), "the watchdog did not notice the database"

        pg_proxy.resume_forwarding()
        await wait_until(lambda: len(notify_socket.received("WATCHDOG")) > pings, timeout=20)
        assert proc.poll() is None, "the daemon died"
        assert stop_with_sigterm(proc) == 0
    finally:
        stop_process(proc)
    assert all(d.fields["WATCHDOG"] == "1" for d in notify_socket.received("WATCHDOG"))
