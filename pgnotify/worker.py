"""Workers: claim a batch, compose it, deliver it, record the outcomes; repeat.

Each step is one round trip for the whole batch and returns its values: ``claim`` the
claimed rows, ``Composer.acompose_batch`` a message (or the error it ended with) per row,
``deliver`` the sends in flight, ``Delivery.settle`` what finished, ``observe_pauses`` each
row's channel pause, ``decide_outcomes`` each row's next state (pure), ``record`` what
landed. In-app rows never leave the claim's transaction: they are composed, decided and
written (``inbox.finish_inapp``) before it commits, so they take one write, not two; email
and SMS rows are leased by it and sent after it. A worker that finds
nothing waits for the scheduler's doorbell. Database errors never kill a worker: it backs
off and goes on, and outcomes it could not record are retried until they land (or the
daemon stops and the lease gives the rows back), because a sent message whose outcome is
lost would be sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from pgnotify import queries
from pgnotify.catalog import INAPP
from pgnotify.channels.base import Channel, InappMessage, Message, Receipt
from pgnotify.db import DB_ERRORS
from pgnotify.errors import ConfigurationError, DeliveryError, PermanentError
from pgnotify.inbox import finish_inapp
from pgnotify.logs import get_logger
from pgnotify.model import ClaimedNotification
from pgnotify.outcome import Outcome, backoff, decide
from pgnotify.runtime import Runtime
from pgnotify.settings import Settings
from pgnotify.text import describe_error
from pgnotify.wakeup import Doorbell

# At shutdown, how long outcomes may still try to reach an unreachable database.
STOP_RECORD_GRACE = 5.0
# How long cancelled sends may take to close their connections.
SETTLE_TIMEOUT = 5.0
# A connection of the pool, as ``pool.acquire()`` hands it out.
Conn = asyncpg.Connection | PoolConnectionProxy


def to_claimed(rows: Sequence[asyncpg.Record]) -> list[ClaimedNotification]:
    """The claim's rows as values; siblings get the context sent with the first of them.

    This is the one place the per-booking context fans out: the claim sends each booking's
    context once per batch, and every notification of that booking shares the same dict.
    """
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
                ics_sequence=row["ics_sequence"],
                audience=row["audience"],
                customer_id=row["customer_id"],
            )
        )
    return batch


@dataclass
class Delivery:
    """One leased batch's deliveries in flight: a task per network send."""

    ended: dict[int, DeliveryError]
    """Rows that ended before any send: composition failed, channel paused or missing."""
    sends: dict[int, asyncio.Task[Receipt]]

    async def wait(self) -> None:
        """Until every send has finished."""
        if self.sends:
            await asyncio.wait(self.sends.values())

    async def settle(self) -> dict[int, Receipt | BaseException]:
        """Each finished row's result.

        Whatever has not finished (shutdown past its grace) is cancelled, and awaited so
        its connection is cleaned up before the daemon closes them; it has no result: the
        release at shutdown, or the lease, gives it back.
        """
        unfinished = [t for t in self.sends.values() if not t.done()]
        for task in unfinished:
            task.cancel()
        if unfinished:
            await asyncio.wait(unfinished, timeout=SETTLE_TIMEOUT)
        results: dict[int, Receipt | BaseException] = dict(self.ended)
        for nid, task in self.sends.items():
            if task.done() and not task.cancelled():
                results[nid] = task.exception() or task.result()
        return results


@dataclass
class Claim:
    """What one claim transaction took: the leased rows to compose and send after it
    commits, and the in-app rows it already finished."""

    leased: list[ClaimedNotification]
    inapp: list[ClaimedNotification]
    inapp_outcomes: list[Outcome]
    inapp_written: set[int]
    started: float


def inapp_results(
    batch: Sequence[ClaimedNotification], composed: Sequence[Message | DeliveryError]
) -> tuple[dict[int, Receipt | BaseException], dict[int, InappMessage]]:
    """Each composed in-app row's result (a message is delivered: the inbox write is its
    receipt) and its message (pure)."""
    results: dict[int, Receipt | BaseException] = {}
    messages: dict[int, InappMessage] = {}
    for n, message in zip(batch, composed, strict=True):
        if isinstance(message, InappMessage):
            messages[n.id] = message
            results[n.id] = Receipt(None)
        elif isinstance(message, DeliveryError):
            results[n.id] = message
        else:
            results[n.id] = PermanentError(f"in-app row composed as {type(message).__name__}")
    return results, messages


def decide_outcomes(
    batch: Sequence[ClaimedNotification],
    results: Mapping[int, Receipt | BaseException],
    pauses: Mapping[int, float],
    settings: Settings,
) -> list[Outcome]:
    """Each finished row's next state (pure); rows without a result (unfinished ones) are
    left out: the release at shutdown or the lease rescuer gives them back."""
    return [
        decide(
            n.id,
            n.attempts,
            result,
            max_retries=settings.NOTIFICATION_MAX_RETRIES,
            delays=settings.NOTIFICATION_RETRY_DELAYS,
            pause=pauses.get(n.id, 0.0),
        )
        for n in batch
        if (result := results.get(n.id)) is not None
    ]


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
                claim = await self.claim()
            except DB_ERRORS as exc:
                await self._db_trouble("claim_failed", exc)
                continue
            if claim is None:
                await Doorbell.wait(token, rt.settings.NOTIFICATION_POLL_INTERVAL)
                continue
            if claim.inapp:
                self._log_outcomes(
                    claim.inapp, claim.inapp_outcomes, claim.inapp_written, claim.started
                )
            if not claim.leased:
                continue
            rt.stats.in_flight += len(claim.leased)
            try:
                await self.process(claim.leased, claim.started)
            finally:
                rt.stats.in_flight -= len(claim.leased)

    async def _db_trouble(self, event: str, exc: BaseException) -> None:
        self.rt.db_failed()
        self._db_failures += 1
        delay = backoff(self._db_failures, 0.1, 5.0)
        self.log.warning(event, error=describe_error(exc), retry_in=round(delay, 2))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self.rt.stopping.wait()

    async def claim(self) -> Claim | None:
        """Claim a batch of due rows and finish its in-app rows, in one transaction; None
        when nothing was due. A row whose data fails the claim fails alone.

        The claim statement computes nothing that one row's data can overflow, but should
        a data error (SQLSTATE class 22) escape it anyway, the batch is claimed again one
        row at a time and the row that raised it becomes a dead letter with the error, so
        it can never stop every other row from being sent.
        """
        rt = self.rt
        s = rt.settings
        started = time.perf_counter()
        try:
            async with rt.pool.acquire() as conn, conn.transaction():
                rows = await conn.fetch(
                    queries.CLAIM_DUE,
                    s.NOTIFICATION_BATCH_SIZE,
                    rt.daemon_id,
                    s.NOTIFICATION_LEASE_SECONDS,
                    rt.pauses.paused(),
                )
                return await self._take(conn, rows, started)
        except asyncpg.DataError as exc:
            self.log.warning("claim_data_error", error=describe_error(exc), note="one by one")
        async with rt.pool.acquire() as conn, conn.transaction():
            return await self._take(conn, await self._claim_one_by_one(conn), started)

    async def _take(
        self, conn: Conn, rows: Sequence[asyncpg.Record], started: float
    ) -> Claim | None:
        """Compose the claimed in-app rows and write their outcomes, in the claim's
        transaction; the leased ones are composed and sent once it has committed."""
        rt = self.rt
        rt.db_ok()
        self._db_failures = 0
        rt.stats.last_claim_at = time.time()
        batch = to_claimed(rows)
        if not batch:
            return None
        rt.stats.last_work_at = time.time()
        self.log.debug("claimed", count=len(batch), ids=[n.id for n in batch])
        inapp = [n for n in batch if n.channel == INAPP]
        leased = [n for n in batch if n.channel != INAPP]
        outcomes: list[Outcome] = []
        written: set[int] = set()
        if inapp:
            results, messages = inapp_results(inapp, await rt.composer.acompose_batch(inapp))
            outcomes = decide_outcomes(inapp, results, {}, rt.settings)
            written = await finish_inapp(conn, rt.daemon_id, inapp, outcomes, messages)
        return Claim(leased, inapp, outcomes, written, started)

    async def _claim_one_by_one(self, conn: Conn) -> list[asyncpg.Record]:
        """Claim the due rows one at a time, each in a savepoint of the claim's
        transaction; fail each one whose claim is a data error."""
        rt = self.rt
        s = rt.settings
        paused = rt.pauses.paused()
        rows: list[asyncpg.Record] = []
        for (nid,) in await conn.fetch(queries.DUE_IDS, s.NOTIFICATION_BATCH_SIZE, paused):
            try:
                async with conn.transaction():
                    rows += await conn.fetch(
                        queries.CLAIM_ONE, nid, rt.daemon_id, s.NOTIFICATION_LEASE_SECONDS, paused
                    )
            except asyncpg.DataError as exc:
                error = describe_error(exc)
                if await conn.fetch(queries.FAIL_UNCLAIMABLE, nid, error):
                    rt.stats.failed += 1
                    self.log.error("failed", id=nid, error=f"cannot be claimed: {error}")
        return rows

    async def process(self, batch: Sequence[ClaimedNotification], started: float) -> None:
        """Compose, deliver and record one leased batch (outside the claim's transaction:
        a shop's template may take its whole render budget)."""
        delivery = self.deliver(batch, await self.rt.composer.acompose_batch(batch))
        try:
            await delivery.wait()
        finally:
            # Also on cancellation (shutdown past its grace): whatever finished is recorded,
            # so a message that went out is not sent again after the release. The finish
            # is its own task, known to the daemon, which waits for it before releasing.
            finish = asyncio.ensure_future(self.finish(batch, delivery, started))
            self.rt.shared.finishing[finish] = [n.id for n in batch]
            finish.add_done_callback(self.rt.shared.finishing.pop)
            await asyncio.shield(finish)

    async def finish(
        self, batch: Sequence[ClaimedNotification], delivery: Delivery, started: float
    ) -> None:
        """Settle the deliveries, account pauses, decide and record the outcomes."""
        results = await delivery.settle()
        pauses = self.observe_pauses(batch, results)
        outcomes = decide_outcomes(batch, results, pauses, self.rt.settings)
        if outcomes:
            await self.record(batch, outcomes, started)

    def deliver(
        self, batch: Sequence[ClaimedNotification], composed: Sequence[Message | DeliveryError]
    ) -> Delivery:
        """Start the batch's network sends, all together."""
        rt = self.rt
        paused = set(rt.pauses.paused())
        ended: dict[int, DeliveryError] = {}
        sends: dict[int, asyncio.Task[Receipt]] = {}
        for n, message in zip(batch, composed, strict=True):
            if isinstance(message, DeliveryError):
                ended[n.id] = message
            elif n.channel in paused:
                ended[n.id] = ConfigurationError(f"{n.channel} channel is paused")
            elif (channel := rt.channels.get(n.channel)) is None:
                ended[n.id] = PermanentError(f"no channel configured for {n.channel!r}")
            else:
                sends[n.id] = asyncio.create_task(self._send(channel, message))
        return Delivery(ended, sends)

    async def _send(self, channel: Channel, message: Message) -> Receipt:
        # Channels enforce the send timeout themselves; this outer bound only guards
        # against a channel that forgets to, so a lease can never be outlived by a send.
        async with asyncio.timeout(self.rt.settings.NOTIFICATION_SEND_TIMEOUT + 5):
            return await channel.send(message)

    def observe_pauses(
        self, batch: Sequence[ClaimedNotification], results: Mapping[int, Receipt | BaseException]
    ) -> dict[int, float]:
        """Account every result in the channel pauses; returns each row's pause in seconds."""
        pauses = self.rt.pauses
        return {
            n.id: pauses.observe(n.channel, result)
            for n in batch
            if (result := results.get(n.id)) is not None
        }

    async def record(
        self,
        batch: Sequence[ClaimedNotification],
        outcomes: Sequence[Outcome],
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
        self._log_outcomes(batch, outcomes, recorded, started)

    async def _record(self, outcomes: Sequence[Outcome], recorded: set[int]) -> None:
        rt = self.rt
        stop_deadline: float | None = None
        failures = 0
        while outcomes:
            try:
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
                            error=describe_error(exc),
                            note="rows return to pending when their lease expires",
                        )
                        return
                rt.db_failed()
                delay = backoff(failures, 0.1, 5.0)
                self.log.warning(
                    "record_failed",
                    count=len(outcomes),
                    error=describe_error(exc),
                    retry_in=round(delay, 2),
                )
                await asyncio.sleep(delay)

    def _log_outcomes(
        self,
        batch: Sequence[ClaimedNotification],
        outcomes: Sequence[Outcome],
        recorded: set[int],
        started: float,
    ) -> None:
        stats = self.rt.stats
        by_id = {n.id: n for n in batch}
        sent_ids: list[int] = []
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
