"""``pgnotify run``: wire the listener, scheduler, workers, maintenance and health together.

Start-up waits for the database with backoff (the health socket answers 503 meanwhile),
then tells systemd READY=1 once the LISTEN connection is up. SIGTERM/SIGINT stop claiming,
let in-flight sends finish for ``NOTIFICATION_SHUTDOWN_GRACE`` seconds, record what
finished, release the rest back to pending, and exit 0; a second signal exits at once.
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
from pgnotify.channels.registry import build_channels
from pgnotify.compose import Composer
from pgnotify.db import init_connection, keep_session
from pgnotify.health import HealthServer
from pgnotify.listener import Listener
from pgnotify.logs import get_logger
from pgnotify.maintenance import purge_retention, rescue_leases, watchdog
from pgnotify.outcome import backoff, one_line
from pgnotify.runtime import Runtime
from pgnotify.scheduler import Scheduler
from pgnotify.settings import Settings
from pgnotify.systemd import SystemdNotifier
from pgnotify.templates import TemplateRenderer
from pgnotify.worker import DB_ERRORS, Worker, db_error


def make_daemon_id() -> str:
    """Who holds a claim: readable in ``claimed_by`` (host, pid) and unique per start."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Daemon:
    def __init__(self, settings: Settings, *, daemon_id: str | None = None) -> None:
        self.settings = settings
        renderer = TemplateRenderer.from_settings(settings)
        # A broken default template fails the start, loudly, not every notification.
        renderer.compile_all()
        self.rt = Runtime(
            settings=settings,
            daemon_id=daemon_id or make_daemon_id(),
            composer=Composer(settings, renderer),
            channels=build_channels(settings),
        )
        self.log = get_logger(component="daemon", daemon=self.rt.daemon_id)
        self.listener = Listener(
            settings.listen_database_url,
            self.rt.changed.ring,
            probe_interval=settings.NOTIFICATION_PROBE_INTERVAL,
            probe_timeout=min(settings.NOTIFICATION_PROBE_INTERVAL, 5.0),
            connect_timeout=settings.NOTIFICATION_DB_TIMEOUT,
        )
        self.notifier = SystemdNotifier()
        self.health: HealthServer | None = None
        self.started_at = time.time()
        self.exit_code = 0
        self._signals = 0

    # -- health -------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        rt, st = self.rt, self.rt.stats
        pool_up = rt.pool is not None and st.db_ok
        channels = {
            name: {"mode": ch.mode, **rt.pauses.describe(name)} for name, ch in rt.channels.items()
        }
        channels["inapp"] = {"mode": "inbox", **rt.pauses.describe("inapp")}
        return {
            "ok": bool(self.listener.connected and pool_up),
            "daemon": rt.daemon_id,
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

    _queue_usage: float | None = None

    # -- lifecycle ----------------------------------------------------------------------
    def _on_signal(self, signame: str) -> None:
        self._signals += 1
        if self._signals > 1:
            self.log.warning("second_signal_exit_now", signal=signame)
            os._exit(1)
        self.log.info("stopping", signal=signame, grace_s=self.settings.NOTIFICATION_SHUTDOWN_GRACE)
        self.notifier.stopping()
        self.stop()

    def stop(self) -> None:
        self.rt.stopping.set()
        self.rt.work.ring()
        self.rt.changed.ring()

    async def _connect_pool(self) -> asyncpg.Pool:
        s = self.settings
        failures = 0
        while True:
            try:
                pool: asyncpg.Pool = await asyncpg.create_pool(
                    s.asyncpg_url,
                    min_size=1,
                    max_size=s.NOTIFICATION_WORKERS + 3,
                    init=init_connection,
                    reset=keep_session,
                    command_timeout=s.NOTIFICATION_DB_TIMEOUT,
                    timeout=s.NOTIFICATION_DB_TIMEOUT,
                    statement_cache_size=0 if s.DATABASE_PGBOUNCER else 100,
                    server_settings={
                        "application_name": "pgnotify",
                        "timezone": "UTC",
                        # asyncpg prepares every statement; after five runs Postgres may
                        # switch to a generic plan, and the claim's generic plan scans
                        # the whole queue (measured: 11.6 ms against 1.4 ms). Our
                        # statements are few and cheap to plan: always plan for the values.
                        "plan_cache_mode": "force_custom_plan",
                    },
                )
                return pool
            except DB_ERRORS as exc:
                failures += 1
                delay = backoff(failures, 0.5, 30.0)
                self.log.warning(
                    "database_unavailable", error=db_error(exc), retry_in=round(delay, 2)
                )
                self.notifier.status(f"waiting for the database: {db_error(exc)[:200]}")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self.rt.stopping.wait()
                if self.rt.stopping.is_set():
                    raise asyncio.CancelledError from None

    async def _queue_usage_loop(self) -> None:
        while not self.rt.stopping.is_set():
            with contextlib.suppress(*DB_ERRORS):
                assert self.rt.pool is not None
                value = await self.rt.pool.fetchval(queries.NOTIFICATION_QUEUE_USAGE)
                self._queue_usage = float(value)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(15):
                    await self.rt.stopping.wait()

    async def run(self, *, install_signals: bool = True) -> int:
        """Run until ``stop()`` or a signal; returns the exit code."""
        s, rt = self.settings, self.rt
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT) if install_signals else ():
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._on_signal, sig.name)
        modes = {name: ch.mode for name, ch in rt.channels.items()}
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
            await self.health.start()
            self.log.info("health_listening", address=f"{self.health.host}:{self.health.port}")
        try:
            try:
                rt.pool = await self._connect_pool()
            except asyncio.CancelledError:
                return 0
            rt.db_ok()
            tasks = await self._start_tasks()
            await self._supervise(tasks)
            await self._shutdown(tasks)
        finally:
            if self.health is not None:
                await self.health.close()
            for ch in rt.channels.values():
                with contextlib.suppress(Exception):
                    await ch.aclose()
        self.log.info("stopped", sent=rt.stats.sent, exit_code=self.exit_code)
        return self.exit_code

    async def _supervise(self, tasks: dict[str, list[asyncio.Task[None]]]) -> None:
        """Wait for a stop request; a core loop that dies stops the daemon with exit 1.

        Every loop catches the errors it expects, so a loop that ends is a bug. Delivering
        with a dead scheduler or no workers would look healthy while sending nothing:
        better to exit non-zero and let systemd restart us (leases give the rows back).
        """
        stopping = asyncio.create_task(self.rt.stopping.wait(), name="stop-request")
        core = [*tasks["workers"], *tasks["background"]]
        try:
            done, _ = await asyncio.wait([stopping, *core], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        died = [t for t in done if t is not stopping]
        if died and not self.rt.stopping.is_set():
            for task in died:
                exc = None if task.cancelled() else task.exception()
                self.log.critical(
                    "task_died",
                    task=task.get_name(),
                    error=one_line(f"{type(exc).__name__}: {exc}") if exc else "returned",
                    exc_info=exc,
                )
            self.exit_code = 1
            self.notifier.status("a core task died; stopping")
            self.stop()

    async def _start_tasks(self) -> dict[str, list[asyncio.Task[None]]]:
        rt, s = self.rt, self.settings
        listener = asyncio.create_task(self.listener.run(), name="listener")
        # READY=1 once listening (or after a few seconds: the poll covers a slow LISTEN).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await self.listener.up.wait()
        workers = [
            asyncio.create_task(Worker(rt, i).run(), name=f"worker-{i}")
            for i in range(s.NOTIFICATION_WORKERS)
        ]
        background = [
            listener,
            asyncio.create_task(Scheduler(rt).run(), name="scheduler"),
            asyncio.create_task(rescue_leases(rt), name="lease-rescuer"),
            asyncio.create_task(purge_retention(rt), name="retention"),
            asyncio.create_task(watchdog(rt, self.notifier), name="watchdog"),
            asyncio.create_task(self._queue_usage_loop(), name="queue-usage"),
        ]
        self.notifier.ready(f"delivering with {s.NOTIFICATION_WORKERS} workers")
        self.log.info("ready", listening=self.listener.connected)
        return {"workers": workers, "background": background}

    async def _shutdown(self, tasks: dict[str, list[asyncio.Task[None]]]) -> None:
        rt, s = self.rt, self.settings
        workers = tasks["workers"]
        _, pending = await asyncio.wait(workers, timeout=s.NOTIFICATION_SHUTDOWN_GRACE)
        if pending:
            self.log.warning("grace_expired", in_flight=rt.stats.in_flight)
            for t in pending:
                t.cancel()
            await asyncio.wait(pending, timeout=10)
        for t in tasks["background"]:
            t.cancel()
        await asyncio.gather(*tasks["background"], return_exceptions=True)
        await self.listener.close()
        assert rt.pool is not None
        try:
            async with asyncio.timeout(10):
                released = await rt.pool.fetch(queries.RELEASE_CLAIMED, rt.daemon_id)
            if released:
                self.log.info("released", count=len(released), ids=[r["id"] for r in released])
        except DB_ERRORS as exc:
            self.log.error(
                "release_failed",
                error=db_error(exc),
                note="rows return to pending when their lease expires",
            )
        with contextlib.suppress(Exception):
            async with asyncio.timeout(10):
                await rt.pool.close()
