"""Workers: deliver due in-app rows, claim a batch of the others, compose it, deliver it,
record the outcomes; repeat.

Each step is one round trip for the whole batch and returns its values: ``claim`` →
``Composer.acompose_batch`` → ``deliver`` → ``Delivery.settle`` → ``outcomes_of`` (pure
``decide_outcomes``) → ``record``. In-app rows are a database write, done in one
transaction (``deliver_inapp``, ``pgnotify.inbox``); the others leave the process, so they
are claimed under a lease. A worker that finds nothing waits for the scheduler's doorbell.
Database errors never kill a worker: it backs off and goes on, and the outcomes of leased
rows it could not record are retried until they land (or the daemon stops and the lease
gives the rows back), because a sent message whose outcome is lost would be sent again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from pgnotify import queries
from pgnotify.catalog import INAPP
from pgnotify.channels.base import Channel, InappMessage, Message, Receipt
from pgnotify.db import DB_ERRORS, is_database_away
from pgnotify.errors import ConfigurationError, DeliveryError, PermanentError, TransientError
from pgnotify.inbox import finish_inapp
from pgnotify.logs import get_logger
from pgnotify.model import ClaimedNotification
from pgnotify.outcome import Outcome, backoff, decide
from pgnotify.runtime import Runtime
from pgnotify.settings import Settings
from pgnotify.text import describe_error
from pgnotify.wakeup import wait_event

# At shutdown, how long outcomes may still try to reach an unreachable database.
STOP_RECORD_GRACE = 5.0
# How long cancelled sends may take to close their connections.
SETTLE_TIMEOUT = 5.0

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
                customer_id=row["customer_id"],
                booking_id=row["booking_id"],
                payment_id=row["payment_id"],
                attempts=row["attempts"],
                run_at=row["run_at"],
                context=context,
                stale_reason=row["stale_reason"],
                ics_sequence=row["ics_sequence"],
                audience=row["audience"],
            )
        )
    return batch


@dataclass
class Delivery:
    """One batch's network sends in flight, a task each."""

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


class _LockDataError(Exception):
    """The in-app lock failed on some row's data; its transaction rolled back."""


class Worker:
    def __init__(self, rt: Runtime, index: int) -> None:
        self.rt = rt
        self.log = get_logger(component="worker", worker=index)
        self._db_failures = 0
        self.lock_inapp = queries.lock_inapp(rt.settings.NOTIFICATION_BATCH_SIZE)

    async def run(self) -> None:
        """Loop until the daemon stops; the current batch always finishes.

        A claim that found nothing is not asked again until the doorbell rings (new rows,
        a due time, a resumed channel, or the poll): a burst of one kind of row does not
        pay an empty claim of the other kind on every batch. The in-app rows and the others
        fail apart: trouble with one never keeps the other from being claimed.
        """
        rt = self.rt
        inapp_idle: asyncio.Event | None = None  # the ring at which each claim found nothing
        leased_idle: asyncio.Event | None = None
        while not rt.stopping.is_set():
            token = rt.work.token()
            taken = 0
            if inapp_idle is not token:
                try:
                    taken = await self.deliver_inapp()
                except DB_ERRORS as exc:
                    await self._db_trouble("inapp_failed", exc)
            inapp_idle = None if taken else token
            batch: list[ClaimedNotification] = []
            # Stopped meanwhile: claim nothing more (it would only be released again).
            if leased_idle is not token and not rt.stopping.is_set():
                try:
                    batch = await self.claim()
                except DB_ERRORS as exc:
                    leased_idle = None
                    await self._db_trouble("claim_failed", exc)
                    continue
            leased_idle = None if batch else token
            if batch:
                rt.stats.in_flight += len(batch)
                try:
                    await self.process(batch)
                finally:
                    rt.stats.in_flight -= len(batch)
            elif not taken and not await wait_event(token, rt.settings.NOTIFICATION_POLL_INTERVAL):
                inapp_idle = leased_idle = None  # the worker's own poll: look at both again

    async def _db_trouble(self, event: str, exc: BaseException) -> None:
        self.rt.stats.db_ok = False
        self._db_failures += 1
        delay = backoff(self._db_failures, 0.1, 5.0)
        self.log.warning(event, error=describe_error(exc), retry_in=round(delay, 2))
        await wait_event(self.rt.stopping, delay)

    def _db_fine(self) -> None:
        """A claim or an in-app transaction went through: the database answers."""
        self.rt.stats.db_ok = True
        self._db_failures = 0

    def _claimed(self, rows: Sequence[asyncpg.Record]) -> list[ClaimedNotification]:
        rt = self.rt
        rt.stats.last_claim_at = time.time()
        batch = to_claimed(rows)
        if batch:
            # The scheduler polls faster while workers find work (wake-ups off).
            rt.stats.last_work_at = rt.stats.last_claim_at
            self.log.debug("claimed", count=len(batch), ids=[n.id for n in batch])
        return batch

    async def deliver_inapp(self) -> int:
        """Deliver a batch of due in-app rows in one transaction; returns how many it took.

        A row whose data fails the lock fails alone, as in ``claim``.
        """
        if INAPP in self.rt.pauses.paused():
            return 0
        try:
            return await self._deliver_inapp(one_by_one=False)
        except _LockDataError as exc:
            self.log.warning("claim_data_error", error=describe_error(exc), note="one by one")
        return await self._deliver_inapp(one_by_one=True)

    async def _deliver_inapp(self, *, one_by_one: bool) -> int:
        """Lock, compose and write in-app rows, each once with its inbox message, before
        the transaction commits: only they are held while a shop's template renders.

        Should the database go away before the commit (a lost connection, a server in
        trouble, an idle transaction cut off), the rows are pending as they were, attempts
        uncounted: the worker backs off and takes them again. A write that fails on what
        it was given (a value, a unique key, an application's trigger on the inbox) is done
        again row by row, so that the guilty row alone gets a failed attempt.
        """
        rt = self.rt
        started = time.perf_counter()
        outcomes: list[Outcome] = []
        messages: dict[int, InappMessage] = {}
        async with rt.pool.acquire() as conn:
            try:
                async with conn.transaction():
                    batch = self._claimed(await self._lock_inapp(conn, one_by_one))
                    if not batch:
                        self._db_fine()
                        return 0
                    rt.stats.in_flight += len(batch)
                    try:
                        composed = await rt.composer.acompose_batch(batch)
                        results, messages = inapp_results(batch, composed)
                        outcomes = self.outcomes_of(batch, results)
                        written = await finish_inapp(conn, rt.daemon_id, batch, outcomes, messages)
                    finally:
                        rt.stats.in_flight -= len(batch)
            except DB_ERRORS as exc:
                if not outcomes or is_database_away(exc):
                    raise
                outcomes, written = await self._finish_one_by_one(
                    conn, batch, outcomes, messages, exc
                )
        self._db_fine()
        self._log_outcomes(batch, outcomes, written, started)
        return len(batch)

    async def _lock_inapp(self, conn: Conn, one_by_one: bool) -> list[asyncpg.Record]:
        if one_by_one:
            return await self._one_by_one(
                conn, queries.DUE_INAPP_IDS, (), queries.LOCK_INAPP_ONE, ()
            )
        try:
            return await conn.fetch(self.lock_inapp)
        except asyncpg.DataError as exc:
            raise _LockDataError(describe_error(exc)) from exc

    async def _finish_one_by_one(
        self,
        conn: Conn,
        batch: Sequence[ClaimedNotification],
        outcomes: Sequence[Outcome],
        messages: Mapping[int, InappMessage],
        exc: BaseException,
    ) -> tuple[list[Outcome], set[int]]:
        """Write the batch again row by row, each in a savepoint, after its one write failed
        on what it was given (and rolled back); the row whose write fails again gets a
        failed attempt with the error instead, or, should even that fail, becomes a dead
        letter. Only the rows still pending are written: another daemon may have taken
        the others meanwhile."""
        rt = self.rt
        self.log.warning("inbox_write_failed", error=describe_error(exc), note="one by one")
        by_id = {o.id: o for o in outcomes}
        final: list[Outcome] = []
        written: set[int] = set()
        daemon = rt.daemon_id
        async with conn.transaction():
            mine = {r["id"] for r in await conn.fetch(queries.LOCK_PENDING, list(by_id))}
            for n in batch:
                if n.id not in mine:
                    continue
                outcome = by_id[n.id]
                try:
                    async with conn.transaction():
                        written |= await finish_inapp(conn, daemon, batch, [outcome], messages)
                except DB_ERRORS as row_exc:
                    if is_database_away(row_exc):
                        raise
                    error = TransientError(f"inbox write failed: {describe_error(row_exc)}")
                    (outcome,) = decide_outcomes([n], {n.id: error}, {}, rt.settings)
                    try:
                        async with conn.transaction():
                            written |= await finish_inapp(conn, daemon, batch, [outcome], {})
                    except DB_ERRORS as last_exc:
                        if is_database_away(last_exc):
                            raise
                        reason = f"cannot be written: {describe_error(last_exc)}"
                        outcome = Outcome(n.id, "failed", last_error=reason)
                        written.update(
                            r["id"] for r in await conn.fetch(queries.FAIL_ROW, n.id, reason)
                        )
                final.append(outcome)
        return final, written

    async def claim(self) -> list[ClaimedNotification]:
        """Claim a batch of due rows to send under a lease; a row whose data fails the
        claim fails alone.

        The claim computes nothing one row's data can overflow; should a data error
        (SQLSTATE class 22) escape it anyway, the batch is taken again one row at a time
        (``_one_by_one``) and the row at fault ends ``failed`` with the error, so it can
        never stop every other row from being sent.
        """
        rt = self.rt
        s = rt.settings
        paused = rt.pauses.paused()
        lease = (rt.daemon_id, s.NOTIFICATION_LEASE_SECONDS, paused)
        try:
            rows = await rt.pool.fetch(queries.CLAIM_DUE, s.NOTIFICATION_BATCH_SIZE, *lease)
        except asyncpg.DataError as exc:
            self.log.warning("claim_data_error", error=describe_error(exc), note="one by one")
            async with rt.pool.acquire() as conn, conn.transaction():
                rows = await self._one_by_one(
                    conn, queries.DUE_IDS, (paused,), queries.CLAIM_ONE, lease
                )
        self._db_fine()
        return self._claimed(rows)

    async def _one_by_one(
        self,
        conn: Conn,
        due_ids: str,
        due_args: tuple[Any, ...],
        take_one: str,
        take_args: tuple[Any, ...],
    ) -> list[asyncpg.Record]:
        """Take the due rows (``due_ids``) one at a time (``take_one``), each in a savepoint
        of the caller's transaction; fail each one whose claim is a data error, at once and
        on its own (the caller's transaction may yet roll back)."""
        rows: list[asyncpg.Record] = []
        size = self.rt.settings.NOTIFICATION_BATCH_SIZE
        for (nid,) in await conn.fetch(due_ids, size, *due_args):
            try:
                async with conn.transaction():
                    rows += await conn.fetch(take_one, nid, *take_args)
            except asyncpg.DataError as exc:
                error = f"cannot be claimed: {describe_error(exc)}"
                if await self.rt.pool.fetch(queries.FAIL_ROW, nid, error):
                    self.rt.stats.failed += 1
                    self.log.error("failed", id=nid, error=error)
        return rows

    async def process(self, batch: Sequence[ClaimedNotification]) -> None:
        """Compose, deliver and record one claimed batch."""
        started = time.perf_counter()
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
        """Settle the deliveries, decide and record the outcomes."""
        results = await delivery.settle()
        outcomes = self.outcomes_of(batch, results)
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

    def outcomes_of(
        self, batch: Sequence[ClaimedNotification], results: Mapping[int, Receipt | BaseException]
    ) -> list[Outcome]:
        """Account every result in the channel pauses, then decide each row's next state."""
        pauses = self.rt.pauses
        paused = {
            n.id: pauses.observe(n.channel, result)
            for n in batch
            if (result := results.get(n.id)) is not None
        }
        return decide_outcomes(batch, results, paused, self.rt.settings)

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
                rt.stats.db_ok = True
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
                rt.stats.db_ok = False
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
        sent_ids = []
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
