"""``pgnotify run``: wire the listener, scheduler, workers, maintenance and health together.

Start-up waits for the database with backoff (the health socket answers 503 meanwhile),
then tells systemd READY=1 once the LISTEN connection is up. SIGTERM/SIGINT stop claiming,
let in-flight sends finish for ``NOTIFICATION_SHUTDOWN_GRACE`` seconds, record what
finished, release the rest back to pending, and exit 0. A second signal cuts the grace
short (what finished is still recorded, the rest released) and exits 1; a third exits at
once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
import uuid
from typing import Any

import asyncpg

from pgnotify import queries
from pgnotify.catalog import verify_catalog
from pgnotify.channels.base import Channel
from pgnotify.channels.registry import build_channels
from pgnotify.channels.sms import TwilioChannel
from pgnotify.compose import Composer
from pgnotify.db import DB_CONFIGURATION_ERRORS, DB_ERRORS, create_pool
from pgnotify.errors import InstallationError, SettingsError
from pgnotify.health import HealthServer
from pgnotify.inbound import poll_inbound
from pgnotify.listener import Listener
from pgnotify.logs import get_logger
from pgnotify.maintenance import purge_retention, rescue_leases, watchdog
from pgnotify.migrate import MigrationError, discover
from pgnotify.model import Catalog
from pgnotify.outcome import backoff
from pgnotify.runtime import Runtime, Shared
from pgnotify.scheduler import schedule
from pgnotify.settings import Settings
from pgnotify.systemd import SystemdNotifier
from pgnotify.templates import TemplateRenderer
from pgnotify.text import describe_error
from pgnotify.wakeup import wait_event
from pgnotify.worker import SETTLE_TIMEOUT, STOP_RECORD_GRACE, Worker


class _NotMigrated(MigrationError):
    """The database lacks migrations this install ships."""


_START_ERRORS: tuple[type[BaseException], ...] = (*DB_ERRORS, MigrationError)


def _why_start_fails(exc: BaseException) -> tuple[str, str] | None:
    """(event, error) when ``exc`` at start is one that no retry can fix, else None."""
    if isinstance(exc, _NotMigrated):
        return "database_not_migrated", f"{exc}: run pgnotify migrate"
    if isinstance(exc, asyncpg.UndefinedTableError | asyncpg.InvalidSchemaNameError):
        return "database_not_migrated", f"{describe_error(exc)}: run pgnotify migrate"
    if isinstance(exc, MigrationError):  # the shipped sql/ itself is broken
        return "installation_broken", describe_error(exc)
    if isinstance(exc, DB_CONFIGURATION_ERRORS):
        return "database_refused", describe_error(exc)
    return None


def make_daemon_id() -> str:
    """Who holds a claim: readable in ``claimed_by`` (host, pid) and unique per start."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Daemon:
    def __init__(self, settings: Settings, *, daemon_id: str | None = None) -> None:
        self.settings = settings
        # Compiled at start, once the catalog is read (verify_catalog): a broken template
        # fails the start, loudly (exit 2), not every notification of its kind.
        self.renderer = TemplateRenderer.from_settings(settings)
        self.daemon_id = daemon_id or make_daemon_id()
        self.composer = Composer(settings, self.renderer)
        self.channels: dict[str, Channel] = build_channels(settings)
        self.shared = Shared()
        # Built once the pool is connected (``run``); None until then.
        self.rt: Runtime | None = None
        # Set once every loop runs and systemd was told READY=1.
        self.ready = asyncio.Event()
        self.log = get_logger(component="daemon", daemon=self.daemon_id)
        self.listener = Listener(
            settings.listen_database_url,
            self.shared.changed.ring,
            probe_interval=settings.NOTIFICATION_PROBE_INTERVAL,
            probe_timeout=min(settings.NOTIFICATION_PROBE_INTERVAL, 5.0),
            connect_timeout=settings.NOTIFICATION_DB_TIMEOUT,
        )
        self.notifier = SystemdNotifier()
        self.health: HealthServer | None = None
        self.started_at = time.time()
        self._queue_usage: float | None = None  # pg_notification_queue_usage(), every 15 s
        self.exit_code = 0
        self._signals = 0
        # Set by a second signal: end the graceful wait now (what finished is still
        # recorded and the rest released, so nothing is sent twice).
        self._hurry = asyncio.Event()

    # -- health -------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        st, pauses = self.shared.stats, self.shared.pauses
        pool_up = self.rt is not None and st.db_ok
        channels = {
            name: {"mode": ch.mode, **pauses.describe(name)} for name, ch in self.channels.items()
        }
        channels["inapp"] = {"mode": "inbox", **pauses.describe("inapp")}
        return {
            "ok": bool(self.listener.connected and pool_up),
            "daemon": self.daemon_id,
            "listener_connected": self.listener.connected,
            "pool_connected": pool_up,
            "last_claim_at": st.last_claim_at,
            "in_flight": st.in_flight,
            "sent": st.sent,
            "retried": st.retried,
            "failed": st.failed,
            "skipped": st.skipped,
            "notification_queue_usage": self._queue_usage,
            "channels": channels,
            "uptime_s": round(time.time() - self.started_at, 1),
        }

    # -- lifecycle ----------------------------------------------------------------------
    def _on_signal(self, signame: str) -> None:
        self._signals += 1
        if self._signals == 2:
            self.log.warning("second_signal_stop_now", signal=signame)
            self.exit_code = 1
            self._hurry.set()
            return
        if self._signals > 2:
            self.log.warning("third_signal_exit_now", signal=signame)
            os._exit(1)
        self.log.info("stopping", signal=signame, grace_s=self.settings.NOTIFICATION_SHUTDOWN_GRACE)
        self.notifier.stopping()
        self.stop()

    def stop(self) -> None:
        self.shared.stopping.set()
        self.shared.work.ring()
        self.shared.changed.ring()

    async def _connect_pool(self) -> tuple[asyncpg.Pool, Catalog] | None:
        """The pool and the catalog, once the database answers; None if the start ends here.

        A database that does not answer is waited for, with backoff. What no wait can fix
        (``_why_start_fails``: a missing schema or a pending migration, since ``pgnotify
        migrate`` runs before the daemon, not beside it; a role, password or privilege the
        server refuses) ends the start with exit 2 and one critical line. A stop that
        arrives meanwhile, even while the pool is being created, ends the start before any
        loop runs.
        """
        failures = 0
        stopping = self.shared.stopping
        while not stopping.is_set():
            pool = None
            try:
                pool = await create_pool(self.settings)
                catalog = await self._read_catalog(pool)
            except _START_ERRORS as exc:
                if pool is not None:
                    pool.terminate()
                if fatal := _why_start_fails(exc):
                    self._cannot_start(*fatal)
                    return None
                failures += 1
                delay = backoff(failures, 0.5, 30.0)
                error = describe_error(exc)
                self.log.warning("database_unavailable", error=error, retry_in=round(delay, 2))
                self.notifier.status(f"waiting for the database: {error[:200]}")
                await wait_event(stopping, delay)
                continue
            if stopping.is_set():  # the stop came while connecting: start nothing
                pool.terminate()
                return None
            return pool, catalog
        return None

    @staticmethod
    async def _read_catalog(pool: asyncpg.Pool) -> Catalog:
        """The kinds and channels of a database migrated by this install, or ``_NotMigrated``."""
        applied = {r["version"] for r in await pool.fetch(queries.APPLIED_MIGRATIONS)}
        pending = [m.name for m in discover() if m.version not in applied]
        if pending:
            raise _NotMigrated(f"pending migrations {', '.join(pending)}")
        return Catalog.from_row(await pool.fetchrow(queries.CATALOG))

    def _cannot_start(self, event: str, error: str) -> None:
        """A start no retry can fix: one critical line and exit 2, which systemd does not
        restart (``RestartPreventExitStatus=2``): it needs an operator."""
        self.log.critical(event, error=error)
        self.notifier.status(f"cannot start: {error[:200]}")
        self.exit_code = 2

    async def _queue_usage_loop(self, rt: Runtime) -> None:
        while not rt.stopping.is_set():
            with contextlib.suppress(*DB_ERRORS):
                value = await rt.pool.fetchval(queries.NOTIFICATION_QUEUE_USAGE)
                self._queue_usage = float(value)
            await wait_event(rt.stopping, 15)

    async def run(self, *, install_signals: bool = True) -> int:
        """Run until ``stop()`` or a signal; returns the exit code."""
        s = self.settings
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT) if install_signals else ():
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._on_signal, sig.name)
        modes = {name: ch.mode for name, ch in self.channels.items()}
        self.log.info(
            "starting",
            workers=s.NOTIFICATION_WORKERS,
            batch_size=s.NOTIFICATION_BATCH_SIZE,
            channels=modes,
        )
        outbox = sorted(n for n, m in modes.items() if m == "outbox")
        if outbox:
            self.log.warning(
                "outbox_mode", channels=outbox, directory=str(s.NOTIFICATION_OUTBOX_DIR.resolve())
            )
        if hp := s.health_host_port:
            self.health = HealthServer(hp[0], hp[1], self.snapshot)
            try:
                await self.health.start()
            except SettingsError as exc:
                self.health = None
                self._cannot_start("health_address_unusable", str(exc))
                return self.exit_code
            self.log.info("health_listening", address=f"{self.health.host}:{self.health.port}")
        try:
            connected = await self._connect_pool()
            if connected is None:
                return self.exit_code
            pool, catalog = connected
            try:
                verify_catalog(catalog, self.renderer, self.channels)
            except InstallationError as exc:
                self.log.critical("catalog_mismatch", error=str(exc))
                pool.terminate()
                self.exit_code = 2
                return self.exit_code
            rt = self.rt = Runtime(
                s, self.daemon_id, pool, self.composer, self.channels, self.shared
            )
            rt.stats.db_ok = True
            tasks = await self._start_tasks(rt)
            await self._supervise(tasks)
            await self._shutdown(rt, tasks)
        finally:
            if self.health is not None:
                await self.health.close()
            for ch in self.channels.values():
                with contextlib.suppress(Exception):
                    await ch.aclose()
            self.composer.close()  # the shop templates' render processes
        self.log.info("stopped", sent=self.shared.stats.sent, exit_code=self.exit_code)
        return self.exit_code

    async def _supervise(self, tasks: dict[str, list[asyncio.Task[None]]]) -> None:
        """Wait for a stop request; a core loop that dies stops the daemon with exit 1.

        Every loop catches the errors it expects, so a loop that ends is a bug. Delivering
        with a dead scheduler or no workers would look healthy while sending nothing:
        better to exit non-zero and let systemd restart us (leases give the rows back).
        """
        stopping = asyncio.create_task(self.shared.stopping.wait(), name="stop-request")
        core = [*tasks["workers"], *tasks["background"]]
        try:
            done, _ = await asyncio.wait([stopping, *core], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        died = [t for t in done if t is not stopping]
        if died and not self.shared.stopping.is_set():
            for task in died:
                exc = None if task.cancelled() else task.exception()
                self.log.critical(
                    "task_died",
                    task=task.get_name(),
                    error=describe_error(exc) if exc else "returned",
                    exc_info=exc,
                )
            self.exit_code = 1
            self.notifier.status("a core task died; stopping")
            self.stop()

    async def _start_tasks(self, rt: Runtime) -> dict[str, list[asyncio.Task[None]]]:
        s = self.settings
        listener = asyncio.create_task(self.listener.run(), name="listener")
        # READY=1 once listening (or after a few seconds: the poll covers a slow LISTEN).
        await wait_event(self.listener.up, 10)
        workers = [
            asyncio.create_task(Worker(rt, i).run(), name=f"worker-{i}")
            for i in range(s.NOTIFICATION_WORKERS)
        ]
        background = [
            listener,
            asyncio.create_task(schedule(rt), name="scheduler"),
            asyncio.create_task(rescue_leases(rt), name="lease-rescuer"),
            asyncio.create_task(purge_retention(rt), name="retention"),
            asyncio.create_task(watchdog(rt, self.notifier), name="watchdog"),
            asyncio.create_task(self._queue_usage_loop(rt), name="queue-usage"),
        ]
        sms = rt.channels.get("sms")
        if s.NOTIFICATION_INBOUND_POLL > 0 and isinstance(sms, TwilioChannel):
            background.append(asyncio.create_task(poll_inbound(rt, sms), name="inbound-poller"))
        self.notifier.ready(f"delivering with {s.NOTIFICATION_WORKERS} workers")
        self.ready.set()
        self.log.info("ready", listening=self.listener.connected)
        return {"workers": workers, "background": background}

    async def _wait_for_workers(
        self, workers: list[asyncio.Task[None]], grace: float
    ) -> set[asyncio.Task[None]]:
        """Wait for the workers' current batches, for the grace or until a second signal;
        returns the workers still busy."""
        hurry = asyncio.create_task(self._hurry.wait())
        try:
            async with asyncio.timeout(grace):
                while not self._hurry.is_set() and (busy := [w for w in workers if not w.done()]):
                    await asyncio.wait([*busy, hurry], return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            pass
        finally:
            hurry.cancel()
        return {w for w in workers if not w.done()}

    async def _shutdown(self, rt: Runtime, tasks: dict[str, list[asyncio.Task[None]]]) -> None:
        s = self.settings
        pending = await self._wait_for_workers(tasks["workers"], s.NOTIFICATION_SHUTDOWN_GRACE)
        if pending:
            self.log.warning(
                "grace_cut_short" if self._hurry.is_set() else "grace_expired",
                in_flight=rt.stats.in_flight,
            )
            for t in pending:
                t.cancel()
            await asyncio.wait(pending, timeout=10)
        if rt.shared.finishing:
            # Cancelled workers leave their outcomes recording: wait for them, so what
            # went out is recorded sent instead of released and sent again.
            await asyncio.wait(
                list(rt.shared.finishing),
                timeout=STOP_RECORD_GRACE + s.NOTIFICATION_DB_TIMEOUT + SETTLE_TIMEOUT,
            )
        held = {i for ids in rt.shared.finishing.values() for i in ids} | rt.unrecorded
        for t in tasks["background"]:
            t.cancel()
        await asyncio.gather(*tasks["background"], return_exceptions=True)
        await self.listener.close()
        try:
            async with asyncio.timeout(10):
                released = await rt.pool.fetch(queries.RELEASE_CLAIMED, rt.daemon_id, sorted(held))
            if released:
                self.log.info("released", count=len(released), ids=[r["id"] for r in released])
        except DB_ERRORS as exc:
            self.log.error(
                "release_failed",
                error=describe_error(exc),
                note="rows return to pending when their lease expires",
            )
        with contextlib.suppress(Exception):
            async with asyncio.timeout(10):
                await rt.pool.close()
