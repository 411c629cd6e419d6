"""Workers: claim a batch, compose it, send it, record the outcomes; repeat.

Each step is one round trip for the whole batch. A worker that finds nothing waits for
the scheduler's doorbell. Database errors never kill a worker: it backs off and goes on,
and outcomes it could not record are retried until they land (or the daemon stops and
the lease gives the rows back), because a sent message whose outcome is lost would be
sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

import asyncpg

from pgnotify import queries
from pgnotify.channels.base import Channel, InappMessage, Message, Receipt
from pgnotify.errors import ConfigurationError, DeliveryError, PermanentError, TransientError
from pgnotify.logs import get_logger
from pgnotify.model import ClaimedNotification
from pgnotify.outcome import Outcome, backoff, decide, one_line
from pgnotify.runtime import Runtime
from pgnotify.wakeup import Doorbell

DB_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    # asyncpg raises this when a connection the server terminated mid-operation is used
    # or reset again ("cannot switch to state 15; another operation (2) is in progress",
    # MagicStack/asyncpg#784): a lost connection like any other, never a reason to die.
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)


# At shutdown, how long outcomes may still try to reach an unreachable database.
STOP_RECORD_GRACE = 5.0


def db_error(exc: BaseException) -> str:
    """A database error as one log line: its class, and its message when it has one.

    Timeouts (asyncio's, and asyncpg's ``command_timeout``) carry no message, so
    ``str(exc)`` alone would log an empty error exactly when the database hangs.
    """
    text = one_line(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def to_claimed(rows: Sequence[asyncpg.Record]) -> list[ClaimedNotification]:
    """The claim's rows as values; siblings get the context sent with the first of them."""
    contexts = {
        (row["booking_id"], row["payment_id"]): row["context"]
        for row in rows
        if row["context"] is not None
    }
    batch = []
    for row in rows:
        context = contexts.get((row["booking_id"], row["payment_id"]))
        batch.append(
            ClaimedNotification(
                id=row["id"],
                kind=row["kind"],
                channel=row["channel"],
                recipient=row["recipient"],
                booking_id=row["booking_id"],
                payment_id=row["payment_id"],
                attempts=row["attempts"],
                run_at=row["run_at"],
                context=context,
                stale_reason=row["stale_reason"],
            )
        )
    return batch


class Worker:
    def __init__(self, rt: Runtime, index: int) -> None:
        self.rt = rt
        self.index = index
        self.log = get_logger(component="worker", worker=index)
        self._db_failures = 0

    async def run(self) -> None:
        """Loop until the daemon stops; the current batch always finishes."""
        rt = self.rt
        while not rt.stopping.is_set():
            token = rt.work.token()
            try:
                batch = await self.claim()
            except DB_ERRORS as exc:
                await self._db_trouble("claim_failed", exc)
                continue
            if not batch:
                await Doorbell.wait(token, rt.settings.NOTIFICATION_POLL_INTERVAL)
                continue
            rt.stats.in_flight += len(batch)
            try:
                await self.process(batch)
            finally:
                rt.stats.in_flight -= len(batch)

    async def _db_trouble(self, event: str, exc: BaseException) -> None:
        self.rt.db_failed()
        self._db_failures += 1
        delay = backoff(self._db_failures, 0.1, 5.0)
        self.log.warning(event, error=db_error(exc), retry_in=round(delay, 2))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self.rt.stopping.wait()

    async def claim(self) -> list[ClaimedNotification]:
        rt = self.rt
        assert rt.pool is not None
        s = rt.settings
        rows = await rt.pool.fetch(
            queries.CLAIM_DUE,
            s.NOTIFICATION_BATCH_SIZE,
            rt.daemon_id,
            s.NOTIFICATION_LEASE_SECONDS,
            rt.pauses.paused(),
        )
        rt.db_ok()
        self._db_failures = 0
        rt.stats.last_claim_at = time.time()
        batch = to_claimed(rows)
        if batch:
            self.log.debug("claimed", count=len(batch), ids=[n.id for n in batch])
        return batch

    async def process(self, batch: Sequence[ClaimedNotification]) -> None:
        """Compose, send and record one claimed batch."""
        started = time.perf_counter()
        results: dict[int, Receipt | BaseException] = {}
        delivered_inapp: set[int] = set()
        try:
            delivered_inapp = await self.dispatch(batch, results)
        finally:
            # Also on cancellation (shutdown past its grace): whatever finished is recorded,
            # so a message that went out is not sent again after the release.
            outcomes = self.decide_all(batch, results)
            if outcomes or delivered_inapp:
                await asyncio.shield(self.record(batch, outcomes, delivered_inapp, started))

    async def dispatch(
        self, batch: Sequence[ClaimedNotification], results: dict[int, Receipt | BaseException]
    ) -> set[int]:
        rt = self.rt
        composed = rt.composer.compose_batch(batch)
        inapp: list[tuple[ClaimedNotification, InappMessage]] = []
        sends = []
        paused = set(rt.pauses.paused())
        for n, message in zip(batch, composed, strict=True):
            if isinstance(message, DeliveryError):
                results[n.id] = message
            elif isinstance(message, InappMessage):
                inapp.append((n, message))
            elif n.channel in paused:
                results[n.id] = ConfigurationError(f"{n.channel} channel is paused")
            elif (channel := rt.channels.get(n.channel)) is None:
                results[n.id] = PermanentError(f"no channel configured for {n.channel!r}")
            else:
                sends.append(self._send(channel, n, message, results))
        # The inbox write and the network sends go out together: neither waits on the other.
        delivered, _ = await asyncio.gather(
            self._deliver_inapp(inapp, results), asyncio.gather(*sends)
        )
        return delivered

    async def _deliver_inapp(
        self,
        items: Sequence[tuple[ClaimedNotification, InappMessage]],
        results: dict[int, Receipt | BaseException],
    ) -> set[int]:
        rt = self.rt
        if not items:
            return set()
        assert rt.pool is not None
        try:
            return await rt.inapp.deliver(rt.pool, rt.daemon_id, items)
        except DB_ERRORS as exc:
            for n, _ in items:
                results[n.id] = TransientError(f"inbox write failed: {db_error(exc)}")
            return set()

    async def _send(
        self,
        channel: Channel,
        n: ClaimedNotification,
        message: Message,
        results: dict[int, Receipt | BaseException],
    ) -> None:
        # Channels enforce the send timeout themselves; this outer bound only guards
        # against a channel that forgets to, so a lease can never be outlived by a send.
        try:
            async with asyncio.timeout(self.rt.settings.NOTIFICATION_SEND_TIMEOUT + 5):
                results[n.id] = await channel.send(message)
        except Exception as exc:
            results[n.id] = exc

    def decide_all(
        self, batch: Sequence[ClaimedNotification], results: dict[int, Receipt | BaseException]
    ) -> list[Outcome]:
        rt = self.rt
        s = rt.settings
        outcomes = []
        for n in batch:
            result = results.get(n.id)
            if result is None:
                continue  # in-app (recorded by its own statement) or never attempted
            pause = 0.0
            if isinstance(result, ConfigurationError):
                pause = rt.pauses.pause(n.channel, one_line(str(result)))
            elif isinstance(result, Receipt):
                rt.pauses.succeeded(n.channel)
            outcomes.append(
                decide(
                    n.id,
                    n.attempts,
                    result,
                    max_retries=s.NOTIFICATION_MAX_RETRIES,
                    delays=s.NOTIFICATION_RETRY_DELAYS,
                    pause=pause,
                )
            )
        return outcomes

    async def record(
        self,
        batch: Sequence[ClaimedNotification],
        outcomes: Sequence[Outcome],
        delivered_inapp: set[int],
        started: float,
    ) -> None:
        """Write the outcomes, retrying through database trouble for as long as it lasts.

        Giving up would let the lease hand sent rows to a daemon that sends them again.
        Retrying is always safe: an outcome lands only while this daemon still holds the
        row (another daemon may have rescued and re-claimed it meanwhile), and this
        daemon's own lease rescuer leaves these rows alone. Only a stop ends the retries.
        """
        rt = self.rt
        recorded: set[int] = set()
        ids = [o.id for o in outcomes]
        rt.unrecorded.update(ids)
        try:
            await self._record(outcomes, recorded)
        finally:
            rt.unrecorded.difference_update(ids)
        self._log_outcomes(batch, outcomes, recorded, delivered_inapp, started)

    async def _record(self, outcomes: Sequence[Outcome], recorded: set[int]) -> None:
        rt = self.rt
        stop_deadline: float | None = None
        failures = 0
        while outcomes:
            try:
                assert rt.pool is not None
                async with rt.pool.acquire() as conn, conn.transaction():
                    rows = await conn.fetch(
                        queries.RECORD_OUTCOMES,
                        [o.id for o in outcomes],
                        [o.status for o in outcomes],
                        [o.delay for o in outcomes],
                        [o.last_error for o in outcomes],
                        [o.provider_id for o in outcomes],
                        [o.release for o in outcomes],
                        rt.daemon_id,
                    )
                    for o in outcomes:
                        if o.opt_out:
                            await conn.execute(queries.RECORD_OPT_OUT, o.id, "sms", o.last_error)
                recorded.update(int(r["id"]) for r in rows)
                rt.db_ok()
                return
            except DB_ERRORS as exc:
                failures += 1
                if rt.stopping.is_set():
                    stop_deadline = stop_deadline or time.monotonic() + STOP_RECORD_GRACE
                    if time.monotonic() > stop_deadline:
                        self.log.error(
                            "outcomes_lost",
                            ids=[o.id for o in outcomes],
                            error=db_error(exc),
                            note="rows return to pending when their lease expires",
                        )
                        return
                rt.db_failed()
                delay = backoff(failures, 0.1, 5.0)
                self.log.warning(
                    "record_failed",
                    count=len(outcomes),
                    error=db_error(exc),
                    retry_in=round(delay, 2),
                )
                await asyncio.sleep(delay)

    def _log_outcomes(
        self,
        batch: Sequence[ClaimedNotification],
        outcomes: Sequence[Outcome],
        recorded: set[int],
        delivered_inapp: set[int],
        started: float,
    ) -> None:
        stats = self.rt.stats
        by_id = {n.id: n for n in batch}
        sent_ids = sorted(delivered_inapp)
        for o in outcomes:
            n = by_id[o.id]
            if o.id not in recorded:
                self.log.warning(
                    "outcome_dropped",
                    id=o.id,
                    kind=n.kind,
                    channel=n.channel,
                    status=o.status,
                    note="row no longer claimed by this daemon",
                )
                continue
            if o.status == "sent":
                sent_ids.append(o.id)
                continue
            fields: dict[str, Any] = {
                "id": o.id,
                "kind": n.kind,
                "channel": n.channel,
                "attempts": n.attempts,
                "error": o.last_error,
            }
            if o.release:
                self.log.warning("released", **fields, retry_in=round(o.delay or 0, 2))
            elif o.status == "pending":
                stats.retried += 1
                self.log.warning("retry_scheduled", **fields, retry_in=round(o.delay or 0, 2))
            elif o.status == "failed":
                stats.failed += 1
                self.log.error("failed", **fields, opt_out=o.opt_out or None)
            else:
                stats.skipped += 1
                self.log.info("skipped", **fields)
        if sent_ids:
            stats.sent += len(sent_ids)
            self.log.info(
                "sent",
                count=len(sent_ids),
                ids=sorted(sent_ids),
                duration_ms=round((time.perf_counter() - started) * 1000, 1),
            )
