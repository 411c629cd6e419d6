"""The LISTEN connection: a dedicated asyncpg connection, never from the pool.

It only wakes the scheduler; losing a NOTIFY costs latency, never a notification. A probe
(``SELECT`` of ``pg_listening_channels()`` under a timeout) catches dead and half-open
connections that TCP would take minutes to notice; on loss it reconnects with capped,
jittered backoff and, once back, wakes the scheduler at once for what arrived meanwhile.
PgBouncer's transaction mode cannot carry LISTEN: point ``LISTEN_DATABASE_URL`` at the
server itself when ``DATABASE_URL`` goes through a pooler.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import asyncpg

from pgnotify import queries
from pgnotify.db import DB_ERRORS
from pgnotify.logs import get_logger
from pgnotify.outcome import backoff
from pgnotify.text import describe_error
from pgnotify.wakeup import wait_event

CHANNEL = "pgnotify"
MAX_BACKOFF = 30.0


class Listener:
    def __init__(
        self,
        dsn: str,
        on_wake: Callable[[], None],
        *,
        probe_interval: float = 5.0,
        probe_timeout: float = 3.0,
        connect_timeout: float = 10.0,
    ) -> None:
        self._dsn = dsn
        self._on_wake = on_wake
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self.connect_timeout = connect_timeout
        self.connected = False
        self.up = asyncio.Event()
        self._conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._log = get_logger(component="listener")

    def _notified(self, *_: Any) -> None:
        self._on_wake()

    def _terminated(self, *_: Any) -> None:
        self._lost.set()

    async def _connect(self) -> asyncpg.Connection:
        conn: asyncpg.Connection = await asyncpg.connect(
            self._dsn,
            timeout=self.connect_timeout,
            statement_cache_size=0,
            server_settings={"application_name": "pgnotify-listener"},
        )
        try:
            # The probe is not running yet: bound the LISTEN itself, or a path that goes
            # half-open right after connecting would hang the listener for good.
            async with asyncio.timeout(self.connect_timeout):
                await conn.add_listener(CHANNEL, self._notified)
        except BaseException:
            conn.terminate()
            raise
        conn.add_termination_listener(self._terminated)
        return conn

    async def _probe(self, conn: asyncpg.Connection) -> str | None:
        """None when healthy, else why the connection is considered lost."""
        try:
            async with asyncio.timeout(self.probe_timeout):
                listening = await conn.fetchval(queries.IS_LISTENING, CHANNEL)
        except TimeoutError:
            return f"probe timed out after {self.probe_timeout:g}s (half-open connection?)"
        except DB_ERRORS as exc:
            return describe_error(exc)
        return None if listening else "channel no longer in pg_listening_channels()"

    async def run(self) -> None:
        """Keep a listening connection until cancelled."""
        failures = 0
        while True:
            try:
                conn = await self._connect()
            except DB_ERRORS as exc:
                failures += 1
                delay = backoff(failures, 0.2, MAX_BACKOFF)
                self._log.warning(
                    "listener_connect_failed",
                    error=describe_error(exc),
                    retry_in=round(delay, 2),
                )
                await asyncio.sleep(delay)
                continue
            self._conn, self.connected, self._lost = conn, True, asyncio.Event()
            self.up.set()
            self._log.info("listener_restored" if failures else "listener_connected")
            failures = 0
            self._on_wake()  # whatever was queued while we were away must not wait
            reason = await self._watch(conn)
            self.connected = False
            self.up.clear()
            self._log.warning("listener_lost", reason=reason)
            conn.terminate()
            self._conn = None
            failures = 1
            await asyncio.sleep(backoff(failures, 0.1, MAX_BACKOFF))

    async def _watch(self, conn: asyncpg.Connection) -> str:
        while True:
            if await wait_event(self._lost, self.probe_interval) or conn.is_closed():
                return "connection terminated"
            reason = await self._probe(conn)
            if reason is not None:
                return reason

    async def close(self) -> None:
        conn, self._conn, self.connected = self._conn, None, False
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await conn.close()
            if not conn.is_closed():
                conn.terminate()
