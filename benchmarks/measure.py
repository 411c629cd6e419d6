"""One function per figure of the benchmark; each returns its raw runs and what it saw.

Nothing here judges a figure against its target (``bench.py`` does). Each function says
what it times, from which moment to which, so a reader can check that it measures what
its label says.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import cycle
from pathlib import Path
from typing import Any

import asyncpg

from benchmarks import dataset as ds
from benchmarks.procs import CpuMeter, CpuUse, DaemonProcess, memory_kib

HISTORY = 30_000  # finished rows in the queue table before each burst
WAIT_SAMPLE_EVERY = 0.02  # seconds between two samples of pg_stat_activity and pg_locks


# -- lock waits -------------------------------------------------------------------------


class WaitSampler:
    """Samples what the benchmark database's backends wait on while a measurement runs
    (``SAMPLE_WAITS`` every ``WAIT_SAMPLE_EVERY``), from a connection to another database.

    A sample is a snapshot, not a trace: a share says in what fraction of the sampled
    moments a backend was in that state, which is where the time of the busy backends goes.
    """

    def __init__(self, url: str, dbname: str) -> None:
        self.url = url
        self.dbname = dbname
        self.samples = 0
        self.states: Counter[str] = Counter()
        self.ungranted: list[int] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        conn = await asyncpg.connect(self.url, database="postgres")
        self._task = asyncio.create_task(self._run(conn))

    async def _run(self, conn: asyncpg.Connection) -> None:
        try:
            while True:
                row = await conn.fetchrow(ds.SAMPLE_WAITS, self.dbname)
                assert row is not None
                self.samples += 1
                self.states.update(row["states"])
                self.ungranted.append(row["ungranted"])
                await asyncio.sleep(WAIT_SAMPLE_EVERY)
        finally:
            await conn.close()

    async def stop(self) -> dict[str, Any]:
        """The summary: backend-samples by state, as shares, and the ungranted locks."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        busy = sum(self.states.values())
        waiting = sum(n for s, n in self.states.items() if s.startswith(("Lock:", "LWLock:")))
        return {
            "samples": self.samples,
            "mean_busy_backends": round(busy / self.samples, 2) if self.samples else 0.0,
            "lock_wait_share": round(waiting / busy * 100, 1) if busy else 0.0,
            "states": {s: round(n / busy * 100, 1) for s, n in self.states.most_common()},
            "ungranted_mean": round(sum(self.ungranted) / len(self.ungranted), 2)
            if self.ungranted
            else 0.0,
            "ungranted_max": max(self.ungranted, default=0),
        }


def describe_waits(waits: dict[str, Any], top: int = 4) -> str:
    """One line: the busiest states with their share of busy backend-samples."""
    states = list(waits["states"].items())[:top]
    shown = ", ".join(f"{s} {share:.0f}%" for s, share in states) or "no busy backend sampled"
    return (
        f"{waits['mean_busy_backends']:.1f} busy backends on average: {shown};"
        f" ungranted locks mean {waits['ungranted_mean']:.1f}, max {waits['ungranted_max']}"
    )


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (q in 0..100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


# -- trigger overhead -------------------------------------------------------------------


async def _back_to_seed(conn: asyncpg.Connection) -> None:
    await conn.execute(ds.RESET_QUEUE)
    await conn.execute(ds.FORGET_EXTRA_BOOKINGS)
    await conn.execute("vacuum analyze booking.bookings")


async def trigger_overhead(
    conn: asyncpg.Connection, *, rows: int, per_row: bool, triggers_first: bool
) -> dict[str, Any]:
    """Seconds to INSERT ``rows`` confirmed bookings in one transaction, with the lifecycle
    triggers and with ``DISABLE TRIGGER USER``; the clock covers BEGIN … COMMIT.

    ``per_row`` inserts them as ``rows`` single-row INSERT statements (asyncpg
    ``executemany``, pipelined), which fires the statement-level triggers once per row;
    otherwise one ``INSERT … SELECT``. The table is back to the seeded bookings (and the
    queue empty) before each insert; callers alternate ``triggers_first``.
    """
    pairs = await conn.fetch(ds.PAIRS)
    args = [(*p, i) for i, p in zip(range(rows), cycle(pairs), strict=False)]
    timings: dict[str, float] = {}
    queued = 0
    for mode in ("with", "without") if triggers_first else ("without", "with"):
        await _back_to_seed(conn)
        if mode == "without":
            await conn.execute("alter table booking.bookings disable trigger user")
        try:
            started = time.perf_counter()
            async with conn.transaction():
                if per_row:
                    await conn.executemany(ds.INSERT_BOOKING, args)
                else:
                    await conn.execute(ds.INSERT_BOOKINGS, rows)
            timings[mode] = time.perf_counter() - started
        finally:
            if mode == "without":
                await conn.execute("alter table booking.bookings enable trigger user")
        if mode == "with":
            queued = await conn.fetchval("select count(*) from pgnotify.notifications")
    await _back_to_seed(conn)
    return {
        "with_s": timings["with"],
        "without_s": timings["without"],
        "ratio": timings["with"] / timings["without"],
        "notifications_queued": queued,
    }


# -- bare claim + complete loop ---------------------------------------------------------


async def bare_loop(
    conn: asyncpg.Connection,
    url: str,
    *,
    rows: int,
    batch: int,
    loops: int,
    dbname: str,
) -> dict[str, Any]:
    """Rows/s of ``loops`` connections each running claim (CTE, SKIP LOCKED, ``batch``)
    then complete (``UPDATE … WHERE id = ANY``) until ``rows`` pending rows are sent.

    The clock starts after the rows are committed and the connections are open, and stops
    when every loop found nothing left. Each statement is its own transaction, as in the
    daemon.
    """
    await conn.execute(ds.RESET_QUEUE)
    await ds.insert_due(conn, rows, ["email"], uuid.uuid4().hex[:8])
    await conn.execute("analyze pgnotify.notifications")
    conns = [await asyncpg.connect(url) for _ in range(loops)]

    async def one(c: asyncpg.Connection, who: str) -> int:
        moved = 0
        while True:
            ids = [r[0] for r in await c.fetch(ds.BARE_CLAIM, batch, who)]
            if not ids:
                return moved
            await c.execute(ds.BARE_COMPLETE, ids, who)
            moved += len(ids)

    meter = CpuMeter([], dbname)
    try:
        meter.start()
        started = time.perf_counter()
        moved = await asyncio.gather(*(one(c, f"bare-{i}") for i, c in enumerate(conns)))
        elapsed = time.perf_counter() - started
        cpu = meter.stop()
    finally:
        for c in conns:
            await c.close()
    return {
        "rows": sum(moved),
        "seconds": elapsed,
        "rows_per_s": sum(moved) / elapsed,
        "cpu": cpu.as_json(sum(moved)),
    }


# -- commit rate ------------------------------------------------------------------------


async def commit_rate(
    conn: asyncpg.Connection,
    url: str,
    *,
    connections: int,
    seconds: float,
    notify: bool,
    dbname: str,
) -> dict[str, Any]:
    """Commits/s of single-row booking INSERTs (``INSERT_BOOKING``, each its own
    transaction, the lifecycle triggers on) from ``connections`` connections for
    ``seconds``, with the wake-up NOTIFY on or off (``pgnotify.settings``).

    One connection LISTENs on the daemon's channel meanwhile, as a daemon's would, so that
    the notifications are really queued. No daemon runs: the queue only grows. The clock
    starts when every connection is open; the bookings are removed afterwards.
    """
    await _back_to_seed(conn)
    await conn.execute(ds.SET_WAKEUP_NOTIFY, notify)
    pairs = await conn.fetch(ds.PAIRS)
    listener = await asyncpg.connect(url)
    await listener.add_listener("pgnotify", lambda *_: None)
    conns = [await asyncpg.connect(url) for _ in range(connections)]
    deadline = 0.0

    async def one(c: asyncpg.Connection, first: int) -> int:
        n = 0
        while time.perf_counter() < deadline:
            k = first + n * connections
            await c.execute(ds.INSERT_BOOKING, *pairs[k % len(pairs)], k)
            n += 1
        return n

    meter = CpuMeter([], dbname)
    try:
        meter.start()
        started = time.perf_counter()
        deadline = started + seconds
        counts = await asyncio.gather(*(one(c, i) for i, c in enumerate(conns)))
        elapsed = time.perf_counter() - started
        cpu = meter.stop()
    finally:
        for c in (*conns, listener):
            await c.close()
        await conn.execute(ds.SET_WAKEUP_NOTIFY, True)
        await _back_to_seed(conn)
    commits = sum(counts)
    return {
        "notify": notify,
        "commits": commits,
        "seconds": round(elapsed, 3),
        "commits_per_s": commits / elapsed,
        "cpu": cpu.as_json(commits),
    }


# -- drain ------------------------------------------------------------------------------


@dataclass
class DrainRun:
    """One drain of a freshly queued backlog."""

    rows: int
    seconds: float
    cpu: CpuUse
    statuses: dict[str, int]
    problems: list[str] = field(default_factory=list)
    per_daemon: dict[str, int] = field(default_factory=dict)
    waits: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else math.nan

    def as_json(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "seconds": round(self.seconds, 4),
            "per_s": round(self.rate, 1),
            "cpu": self.cpu.as_json(self.rows),
            "statuses": self.statuses,
            "per_daemon": self.per_daemon,
            "waits": self.waits,
            "problems": self.problems,
        }


async def wait_drained(conn: asyncpg.Connection, limit_s: float) -> bool:
    """Poll until no row is due or in flight; False if ``limit_s`` passed first."""
    deadline = time.monotonic() + limit_s
    while await conn.fetchval(ds.UNFINISHED):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def outbox_counts(outbox: Path) -> tuple[int, int]:
    """(``.eml`` files, ``sms.jsonl`` lines) in an outbox folder."""
    files = sum(1 for _ in outbox.glob("*.eml"))
    path = outbox / "sms.jsonl"
    lines = len(path.read_bytes().splitlines()) if path.exists() else 0
    return files, lines


def _clear_dir(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


async def drain_once(
    conn: asyncpg.Connection,
    daemons: Sequence[DaemonProcess],
    *,
    rows: int,
    channels: Sequence[str],
    outbox: Path | None,
    limit_s: float,
    url: str,
    dbname: str,
    fresh_stats: bool = False,
    delivered: Callable[[], tuple[int, int]] | None = None,
) -> DrainRun:
    """Queue ``rows`` due notifications in one committed INSERT while the daemons idle, and
    time from that commit to the last row's outcome (``max(updated_at)``, the database's
    clock: the benchmark polls only to know when to look).

    The queue first holds ``HISTORY`` finished rows and is analyzed, as a running system's
    is before a burst; the burst then arrives with the planner's statistics not knowing it
    (until autovacuum's next ANALYZE, up to a minute later). ``fresh_stats`` analyzes the
    burst in its own transaction instead, as if that had happened.

    Meanwhile a ``WaitSampler`` records what the backends wait on. Then check that nothing
    was lost or doubled: every row ``sent``, one inbox row per
    in-app notification, one ``.eml`` per email and one ``sms.jsonl`` line per SMS, or,
    when the daemons send to real peers, ``delivered()`` (emails, SMS the peers hold) grown
    by one per email and SMS.
    """
    await conn.execute(ds.RESET_QUEUE)
    await conn.execute(ds.INSERT_HISTORY, HISTORY)
    await conn.execute("analyze pgnotify.notifications")
    if outbox is not None:
        _clear_dir(outbox)
    before = delivered() if delivered is not None else (0, 0)
    meter = CpuMeter([d.pid for d in daemons], dbname)
    sampler = WaitSampler(url, dbname)
    await asyncio.sleep(0.2)  # let the daemons settle after the truncate
    async with conn.transaction():
        await ds.insert_due(conn, rows, channels, uuid.uuid4().hex[:8])
        if fresh_stats:
            await conn.execute("analyze pgnotify.notifications")
    committed = time.time()
    meter.start()
    await sampler.start()
    try:
        drained = await wait_drained(conn, limit_s)
        cpu = meter.stop()
    finally:
        waits = await sampler.stop()
    finished = await conn.fetchval(ds.LAST_FINISHED) or time.time()
    statuses = {r[0]: r[1] for r in await conn.fetch(ds.OUTCOME_COUNTS)}
    statuses["sent"] = statuses.get("sent", 0) - HISTORY
    problems = []
    if not drained:
        problems.append(f"not drained within {limit_s:.0f}s: {statuses}")
    if statuses.get("sent", 0) != rows:
        problems.append(f"{rows - statuses.get('sent', 0)} of {rows} not sent: {statuses}")
    retried = await conn.fetchval("select count(*) from pgnotify.notifications where attempts > 1")
    if retried:
        problems.append(f"{retried} rows took more than one attempt")
    expected = {
        str(r[0]): int(r[1])
        for r in await conn.fetch(
            "select channel, count(*) from pgnotify.notifications"
            " where occurrence not like 'manual:history-%' group by channel"
        )
    }
    if "inapp" in expected:
        inbox = await conn.fetchval("select count(*) from pgnotify.inbox")
        if inbox != expected["inapp"]:
            problems.append(f"inbox holds {inbox} rows for {expected['inapp']} in-app")
    if delivered is not None:
        after = delivered()
        emails, texts = after[0] - before[0], after[1] - before[1]
        if (emails, texts) != (expected.get("email", 0), expected.get("sms", 0)):
            problems.append(
                f"the peers received {emails} emails and {texts} SMS for"
                f" {expected.get('email', 0)} and {expected.get('sms', 0)}"
            )
    elif outbox is not None:
        files, lines = outbox_counts(outbox)
        if files != expected.get("email", 0):
            problems.append(f"outbox holds {files} .eml for {expected.get('email', 0)} emails")
        if lines != expected.get("sms", 0):
            problems.append(f"sms.jsonl holds {lines} lines for {expected.get('sms', 0)} SMS")
    per_daemon = {
        str(r[0]): r[1]
        for r in await conn.fetch(
            "select claimed_by, count(*) from pgnotify.notifications"
            " where claimed_by is not null group by 1 order by 1"
        )
    }
    return DrainRun(
        rows=rows,
        seconds=finished - committed,
        cpu=cpu,
        statuses=statuses,
        problems=problems,
        per_daemon=per_daemon,
        waits=waits,
    )


async def drain(
    conn: asyncpg.Connection,
    settings: dict[str, Any],
    workdir: Path,
    *,
    daemons: int,
    rows: int,
    channels: Sequence[str],
    runs: int,
    url: str,
    dbname: str,
    fresh_stats: bool = False,
    delivered: Callable[[], tuple[int, int]] | None = None,
) -> dict[str, Any]:
    """Start ``daemons`` processes with ``settings``, drain ``runs`` backlogs, stop them.

    ``delivered``: (emails, SMS) received so far, when ``settings`` point at real peers
    rather than the outbox.
    """
    outbox = workdir / "outbox"
    procs = [
        DaemonProcess({**settings, "NOTIFICATION_OUTBOX_DIR": outbox}, workdir, name=f"d{i}")
        for i in range(daemons)
    ]
    results: list[DrainRun] = []
    try:
        for p in procs:
            await p.start()
        for _ in range(runs):
            results.append(
                await drain_once(
                    conn,
                    procs,
                    rows=rows,
                    channels=channels,
                    outbox=outbox if set(channels) & {"email", "sms"} else None,
                    limit_s=60 + rows / 500,
                    url=url,
                    dbname=dbname,
                    fresh_stats=fresh_stats,
                    delivered=delivered,
                )
            )
    finally:
        codes = [await p.stop() for p in procs]
    anomalies: dict[str, int] = {}
    for p in procs:
        for event, n in p.anomalies().items():
            anomalies[event] = anomalies.get(event, 0) + n
    return {
        "runs": [r.as_json() for r in results],
        "per_s": [r.rate for r in results],
        "exit_codes": codes,
        "log_anomalies": anomalies,
    }


# -- latency ----------------------------------------------------------------------------

_MESSAGE_ID = re.compile(rb"^Message-ID: (<[^>\r\n]+>)", re.MULTILINE)


async def insert_at_rate(
    conn: asyncpg.Connection, *, rate: float, seconds: float, offset: int
) -> tuple[dict[Any, float], float, float]:
    """Insert one confirmed booking per transaction, ``rate`` per second for ``seconds``.

    Returns each booking's commit time (wall clock when its INSERT returned), the rate
    reached and the worst lag behind the schedule (s).
    """
    pairs = await conn.fetch(ds.PAIRS)
    commits: dict[Any, float] = {}
    lag_max = 0.0
    total = int(rate * seconds)
    start = time.monotonic()
    for i in range(total):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            lag_max = max(lag_max, -delay)
        p = pairs[(offset + i) % len(pairs)]
        booking = await conn.fetchval(ds.INSERT_BOOKING, *p, offset + i)
        commits[booking] = time.time()
    return commits, total / (time.monotonic() - start), lag_max


async def latency_run(
    conn: asyncpg.Connection,
    smtp: Any,
    twilio: Any,
    *,
    rate: float,
    seconds: float,
    offset: int,
) -> dict[str, Any]:
    """Insert confirmed bookings at ``rate``/s for ``seconds`` (one transaction each), and
    for every email and SMS the peers received, take arrival wall time minus the wall time
    at which that booking's INSERT returned from COMMIT. In-app: ``sent_at`` (the delivering
    statement's start, by the database clock) minus the same commit time.
    """
    smtp_before, twilio_before = len(smtp.messages), len(twilio.messages)
    commits, achieved, lag_max = await insert_at_rate(
        conn, rate=rate, seconds=seconds, offset=offset
    )
    total = len(commits)
    ids = list(commits)
    deadline = time.monotonic() + 30
    while await conn.fetchval(
        "select count(*) from pgnotify.notifications where booking_id = any($1::uuid[])"
        " and kind = 'booking_confirmed' and status in ('pending', 'sending')",
        ids,
    ):
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    rows = await conn.fetch(
        "select channel, provider_id, booking_id, status, extract(epoch from sent_at)::float8"
        " from pgnotify.notifications"
        " where booking_id = any($1::uuid[]) and kind = 'booking_confirmed'",
        ids,
    )
    by_provider = {r[1]: r[2] for r in rows if r[1]}
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[f"{r[0]}:{r[3]}"] = statuses.get(f"{r[0]}:{r[3]}", 0) + 1
    lat: dict[str, list[float]] = {"email": [], "sms": [], "inapp": []}
    unmatched = 0
    for m in smtp.messages[smtp_before:]:
        found = _MESSAGE_ID.search(m.data)
        booking = by_provider.get(found.group(1).decode()) if found else None
        if booking is None:
            unmatched += 1
            continue
        lat["email"].append((m.wall - commits[booking]) * 1000)
    for s in twilio.messages[twilio_before:]:
        booking = by_provider.get(s.sid)
        if booking is None:
            unmatched += 1
            continue
        lat["sms"].append((s.wall - commits[booking]) * 1000)
    for r in rows:
        if r[0] == "inapp" and r[4] is not None:
            lat["inapp"].append((r[4] - commits[r[2]]) * 1000)
    lat["email+sms"] = lat["email"] + lat["sms"]
    out: dict[str, Any] = {
        "commit_walls": commits,
        "bookings": total,
        "achieved_rate": round(achieved, 1),
        "max_insert_lag_ms": round(lag_max * 1000, 1),
        "statuses": statuses,
        "unmatched_messages": unmatched,
    }
    for name, values in lat.items():
        values.sort()
        out[name] = {
            "count": len(values),
            **{f"p{q}": round(percentile(values, q), 2) for q in (50, 95, 99)},
            "max": round(values[-1], 2) if values else None,
        }
    return out


# -- memory -----------------------------------------------------------------------------


async def memory(
    conn: asyncpg.Connection,
    settings: dict[str, Any],
    workdir: Path,
    *,
    chunk: int,
    chunks: int,
) -> dict[str, Any]:
    """RSS of one daemon process idle, then after each drained ``chunk`` of in-app rows."""
    await conn.execute(ds.RESET_QUEUE)
    proc = DaemonProcess(settings, workdir, name="memory")
    samples: list[dict[str, int]] = []
    problems: list[str] = []
    try:
        await proc.start()
        await asyncio.sleep(0.5)
        idle = memory_kib(proc.pid)
        for i in range(chunks):
            await ds.insert_due(conn, chunk, ["inapp"], f"mem{i}-{uuid.uuid4().hex[:6]}")
            if not await wait_drained(conn, 60):
                problems.append(f"chunk {i + 1} not drained within 60s")
                break
            samples.append({"notifications": chunk * (i + 1), **memory_kib(proc.pid)})
        sent = await conn.fetchval(
            "select count(*) from pgnotify.notifications where status = 'sent'"
        )
        if sent != chunk * len(samples):
            problems.append(f"{sent} sent of {chunk * len(samples)}")
    finally:
        code = await proc.stop()
    with contextlib.suppress(Exception):
        await conn.execute(ds.RESET_QUEUE)
    return {
        "idle_kib": idle,
        "samples": samples,
        "exit_code": code,
        "log_anomalies": proc.anomalies(),
        "problems": problems,
    }
