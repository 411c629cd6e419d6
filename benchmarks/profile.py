"""``python -m benchmarks.profile``: where a notification's time goes, in Python and Postgres.

Three views, each per notification:

1. **Sampled**: py-spy (``pip install py-spy``) records a ``pgnotify run`` process while it
   drains a backlog (in-app; email to the outbox; email to a real SMTP server; SMS to the
   Twilio-shaped server). The daemon runs ONE worker × 100 so that on a small machine it
   never waits for a core while runnable: py-spy's samples are then CPU time, which the
   report checks against ``/proc/<pid>/stat``. Each sample is charged to the component
   nearest its leaf (``COMPONENTS``), so the rows add up.
2. **Isolated**: each Python step timed alone (``timeit``) on a real claimed batch.
3. **Postgres**: ``EXPLAIN ANALYZE`` of the daemon's statements and a few alternatives,
   and what the connection pool's reset query and the wake trigger cost.

Nothing here changes pgnotify: the alternatives are measured in the benchmark's own
throw-away database. Writes ``bench-results-profile.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
from psycopg.conninfo import conninfo_to_dict

from benchmarks import dataset as ds
from benchmarks import measure, probes, snapshot
from benchmarks.procs import CpuMeter, DaemonProcess, PeerProcess
from pgnotify import queries
from tests.peers.smtp import SmtpPeer
from tests.peers.twilio import TwilioPeer

# A sample is charged to the first component, in this order, that has a frame anywhere in
# its stack: specific costs first (a json.loads inside an asyncpg callback is "jsonb
# decode"), generic ones last. Needles are substrings of py-spy frames "function (file)".
COMPONENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("jsonb decode (json.loads in the asyncpg codec)", ("loads (json/",)),
    ("json encode (inbox data, outbox lines)", ("dumps (json/",)),
    ("structlog", ("structlog",)),
    # py-spy --nonblocking sometimes catches a stack half-unwound: jinja2's own frames and
    # the compiled templates' (".txt)", ".html)") count as rendering even without their caller.
    ("jinja2 render", ("Template.render (jinja2", "(jinja2/", "(markupsafe/", ".txt)", ".html)")),
    ("build_context", ("build_context (pgnotify/context.py)",)),
    ("build_ics", ("build_ics (pgnotify/ics.py)",)),
    ("build_mime", ("build_mime (pgnotify/channels/mime.py)",)),
    ("outbox file I/O (in worker threads)", ("_write_atomically (", "_append_line (")),
    (
        "thread hand-off (to_thread, futures, self-pipe)",
        (
            "to_thread (asyncio",
            "run_in_executor",
            "_write_to_self",
            "_read_from_self",
            "(concurrent/futures",
            "_chain_future",
            "_call_set_state",
        ),
    ),
    ("SMTP client (aiosmtplib)", ("aiosmtplib",)),
    ("Twilio client (twilio, aiohttp)", ("twilio/", "aiohttp/")),
    ("socket write (send syscall)", ("_SelectorSocketTransport.write",)),
    ("to_claimed", ("to_claimed (pgnotify/worker.py)",)),
    (
        "pool acquire/release + reset query",
        ("PoolConnectionHolder.release", "Connection.reset", "Pool._acquire", "Holder.acquire"),
    ),
    ("asyncpg protocol (encode, decode, send)", ("asyncpg/",)),
    ("socket read callbacks", ("_read_ready",)),
    ("epoll_wait (runnable, not idle)", ("EpollSelector.select",)),
    ("compose (rest)", ("(pgnotify/compose.py)",)),
    ("channels (rest)", ("(pgnotify/channels/",)),
    ("worker loop (claim/dispatch/record/outcomes)", ("(pgnotify/worker.py)",)),
    ("other pgnotify", ("(pgnotify/",)),
    ("asyncio event loop", ("(asyncio/",)),
)


def read_samples(path: Path) -> list[tuple[list[str], int]]:
    samples = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            samples.append((stack.split(";"), int(count)))
    return samples


def attribute(samples: list[tuple[list[str], int]]) -> tuple[Counter[str], Counter[str]]:
    """Samples per component, and the leaf frames of those no component claimed."""
    out: Counter[str] = Counter()
    unmatched: Counter[str] = Counter()
    for frames, count in samples:
        for name, needles in COMPONENTS:
            if any(n in f for f in frames for n in needles):
                out[name] += count
                break
        else:
            out["other"] += count
            unmatched[frames[-1] if frames else "?"] += count
    return out, unmatched


def inclusive(samples: list[tuple[list[str], int]], top: int = 25) -> list[tuple[str, int]]:
    counts: Counter[str] = Counter()
    for frames, count in samples:
        for frame in set(frames):
            counts[frame] += count
    return counts.most_common(top)


# -- 1. sampled ---------------------------------------------------------------------------


def start_py_spy(spy_bin: str, pid: int, rate: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy without pausing the process (``--nonblocking``), raw collapsed stacks."""
    return subprocess.Popen(
        [
            spy_bin,
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(rate),
            "--format",
            "raw",
            "--nolineno",
            "--nonblocking",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def sampled_drain(
    conn: asyncpg.Connection,
    dsn: str,
    workdir: Path,
    *,
    name: str,
    channels: list[str],
    rows: int,
    rate: int,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Drain ``rows`` under py-spy; µs per notification by component, and /proc CPU."""
    spy_bin = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    out = workdir / f"{name}.pyspy.txt"
    settings = {
        "DATABASE_URL": dsn,
        "NOTIFICATION_WORKERS": 1,
        "NOTIFICATION_BATCH_SIZE": 100,
        "NOTIFICATION_LOG_LEVEL": "warning",
        "NOTIFICATION_OUTBOX_DIR": workdir / f"{name}-outbox",
        "FROM_EMAIL": "noreply@bench.example",
        **extra,
    }
    await conn.execute(ds.RESET_QUEUE)
    await conn.execute(ds.INSERT_HISTORY, measure.HISTORY)  # as measure.drain_once does
    await conn.execute("analyze pgnotify.notifications")
    daemon = DaemonProcess(settings, workdir, name=name)
    await daemon.start()
    dbname = str(conninfo_to_dict(dsn)["dbname"])
    try:
        spy = start_py_spy(spy_bin, daemon.pid, rate, out)
        await asyncio.sleep(1.0)  # py-spy attached
        meter = CpuMeter([daemon.pid], dbname)
        await ds.insert_due(conn, rows, channels, uuid.uuid4().hex[:8])
        started = time.time()
        meter.start()
        await measure.wait_drained(conn, 600)
        cpu = meter.stop()
        elapsed = time.time() - started
        spy.send_signal(signal.SIGINT)
        await asyncio.to_thread(spy.wait, 30)
    finally:
        await daemon.stop()
    sent = (
        await conn.fetchval("select count(*) from pgnotify.notifications where status = 'sent'")
        - measure.HISTORY
    )
    samples = read_samples(out)
    total = sum(c for _, c in samples)
    us = 1e6 / rate / rows
    parts, unmatched = attribute(samples)
    return {
        "rows": rows,
        "sent": sent,
        "per_s": round(rows / elapsed, 1),
        "cpu": cpu.as_json(rows),
        "sampled_us_per_notification": round(total * us, 1),
        "components_us": {k: round(v * us, 1) for k, v in parts.most_common()},
        "inclusive_top_us": [(f, round(c * us, 1)) for f, c in inclusive(samples)],
        "unmatched_leaves_us": [(f, round(c * us, 1)) for f, c in unmatched.most_common(8)],
        "log_anomalies": daemon.anomalies(),
    }


# -- 2. isolated ------------------------------------------------------------------------


def per_call_us(fn: Callable[[], object], number: int = 0) -> float:
    """Median of 5 timeit repeats, in µs per call."""
    timer = timeit.Timer(fn)
    if not number:
        number, _ = timer.autorange()
    return statistics.median(t / number * 1e6 for t in timer.repeat(5, number))


async def _daemon_codecs(conn: asyncpg.Connection) -> None:
    """The JSON codecs the daemon's connections use (wherever this version defines them)."""
    try:
        from pgnotify.db import init_connection
    except ImportError:
        from pgnotify.daemon import _init_connection as init_connection  # type: ignore[attr-defined,no-redef]
    await init_connection(conn)


async def isolated_steps(conn: asyncpg.Connection, dsn: str) -> dict[str, float]:
    """Each step of the hot path alone, on one real claimed batch of each channel."""
    from pydantic import SecretStr

    from pgnotify.channels.mime import build_mime
    from pgnotify.compose import Composer
    from pgnotify.context import build_context
    from pgnotify.ics import build_ics
    from pgnotify.settings import Settings
    from pgnotify.templates import TemplateRenderer
    from pgnotify.worker import to_claimed

    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        DATABASE_URL=SecretStr(dsn),
        FROM_EMAIL="noreply@bench.example",
    )
    renderer = TemplateRenderer.from_settings(settings)
    composer = Composer(settings, renderer)
    await conn.execute(ds.RESET_QUEUE)
    await ds.insert_due(conn, 300, ["email", "sms", "inapp"], uuid.uuid4().hex[:8])
    url = ds.as_url(dsn)
    c = await asyncpg.connect(url)
    await _daemon_codecs(c)
    tr = c.transaction()
    await tr.start()
    try:
        rows = await c.fetch(queries.CLAIM_DUE, 300, "iso", 120.0, [])
        raw = await c.fetch(
            "select pgnotify.render_context(booking_id, payment_id)::text from"
            " pgnotify.notifications where claimed_by = 'iso'"
        )
    finally:
        await tr.rollback()
        await c.close()
    texts = [r[0] for r in raw]
    claimed = [to_claimed(r) for r in rows]
    by_channel = {ch: [n for n in claimed if n.channel == ch] for ch in ("inapp", "sms", "email")}
    ctxs = [build_context(n.context) for n in claimed if n.context]
    email = by_channel["email"][0]
    email_ctx = build_context(email.context or {})
    message = composer.compose(email, context=email_ctx)
    out: dict[str, float] = {}
    i = iter(range(10**9))

    def nth(seq: list[Any]) -> Any:
        return seq[next(i) % len(seq)]

    out["json.loads of one context (jsonb codec)"] = per_call_us(lambda: json.loads(nth(texts)))
    out["to_claimed (Record → dataclass)"] = per_call_us(lambda: to_claimed(nth(list(rows))))
    out["build_context"] = per_call_us(lambda: build_context(nth(claimed).context))
    for ch in ("inapp", "sms", "email"):
        batch = by_channel[ch]
        out[f"compose {ch} (build_context shared per booking, renders, ics)"] = per_call_us(
            functools.partial(lambda b: composer.compose(nth(b)), batch)
        )
    ctx = ctxs[0]
    out["one jinja2 render (inapp_body.txt)"] = per_call_us(
        lambda: renderer.render("booking_confirmed", "inapp_body.txt", ctx, locale="en")
    )
    out["one jinja2 render (email.html, with layout)"] = per_call_us(
        lambda: renderer.render("booking_confirmed", "email.html", ctx, locale="en")
    )
    template = renderer.template("booking_confirmed", "inapp_body.txt", locale="en")
    merged = {**template.globals, **ctx}
    out["  same inapp_body.txt via new_context(shared=True) (experiment)"] = per_call_us(
        lambda: "".join(template.root_render_func(template.new_context(merged, shared=True)))
    )
    out["  jinja2 new_context alone (what each render pays)"] = per_call_us(
        lambda: template.new_context(ctx)
    )
    out["build_ics"] = per_call_us(
        lambda: build_ics(
            "REQUEST", email.context or {}, organizer_email="a@b.example", attendee_email="c@d.ex"
        )
    )
    out["build_mime (text + html + ics)"] = per_call_us(
        lambda: build_mime(message, from_email="noreply@bench.example")  # type: ignore[arg-type]
    )
    data = {"booking_id": str(email.booking_id), "payment_id": None, "kind": email.kind}
    out["json.dumps of one inbox data dict"] = per_call_us(lambda: json.dumps(data))
    out.update(structlog_costs())
    return {k: round(v, 2) for k, v in out.items()}


def structlog_costs() -> dict[str, float]:
    """A log line as the daemon configures structlog (JSON), written to /dev/null."""
    import structlog

    from pgnotify import logs

    with Path("/dev/null").open("w") as null:
        logs.configure("json", "info")
        structlog.configure(logger_factory=structlog.WriteLoggerFactory(file=null))
        log = logs.get_logger(component="worker", worker=0)
        ids = list(range(1_000_000, 1_000_100))
        return {
            "structlog: one 'sent' line with 100 ids (per batch)": per_call_us(
                lambda: log.info("sent", count=100, ids=ids, duration_ms=12.3)
            ),
            "structlog: one failure line (per failed row)": per_call_us(
                lambda: log.warning("retry_scheduled", id=1, kind="x", channel="email", error="e")
            ),
        }


# -- 3. Postgres ------------------------------------------------------------------------


async def claim_with_contexts_inlined(conn: asyncpg.Connection) -> str | None:
    """For versions whose claim calls ``pgnotify.render_contexts(array(select …), …)``:
    the same claim with that function's body pasted in as a CTE over ``claimed``. Postgres
    cannot inline a set-returning SQL function whose arguments are sub-selects, so the call
    runs (and is planned) as a separate query each time; this measures what inlining gives.
    """
    call = re.search(
        r"contexts as \(\s*select \* from pgnotify\.render_contexts\(.*?\)\)\s*\)",
        queries.CLAIM_DUE,
        re.DOTALL,
    )
    row = await conn.fetchrow(
        "select prosrc, proargnames, proargmodes::text[] from pg_proc"
        " where proname = 'render_contexts' and pronamespace = 'pgnotify'::regnamespace"
    )
    source = "unnest(p_booking_ids, p_payment_ids) as u (booking_id, payment_id)"
    if not call or not row or source not in row[0]:
        return None
    columns = ", ".join(n for n, m in zip(row[1], row[2], strict=True) if m == "t")
    body = row[0].strip().rstrip(";").replace(source, "claimed u")
    return queries.CLAIM_DUE.replace(call.group(0), f"contexts ({columns}) as ({body})")


async def claim_round_trips(conn: asyncpg.Connection, url: str) -> dict[str, dict[str, float]]:
    """Median client-side time of the claim (rolled back) on a connection set up like the
    daemon's (``plan_cache_mode = force_custom_plan``, JSON codecs), for this version's
    CLAIM_DUE and for variants of its context function, batches of 1 and 100."""
    variants = {"queries.CLAIM_DUE (this version)": queries.CLAIM_DUE}
    if inlined := await claim_with_contexts_inlined(conn):
        variants["render_contexts() body inlined into the claim"] = inlined
        row: Any = await conn.fetchrow(
            "select prosrc, pg_get_function_arguments(oid), pg_get_function_result(oid)"
            " from pg_proc where proname = 'render_contexts'"
            " and pronamespace = 'pgnotify'::regnamespace"
        )
        await conn.execute(
            f"create or replace function public.bench_render_contexts({row[1]}) returns {row[2]}"
            " language plpgsql stable set plan_cache_mode = force_generic_plan as $f$"
            f" #variable_conflict use_column\n begin return query {row[0].strip().rstrip(';')};"
            " end $f$"
        )
        variants["render_contexts() as PL/pgSQL with a cached generic plan"] = (
            queries.CLAIM_DUE.replace("pgnotify.render_contexts(", "public.bench_render_contexts(")
        )
    c = await asyncpg.connect(url, server_settings={"plan_cache_mode": "force_custom_plan"})
    await _daemon_codecs(c)
    out: dict[str, dict[str, float]] = {}
    try:
        for label, sql in variants.items():
            out[label] = {}
            for batch in (1, 100):
                times = []
                for _ in range(25):
                    tr = c.transaction()
                    await tr.start()
                    t = time.perf_counter()
                    await c.fetch(sql, batch, "probe", 120.0, [])
                    times.append((time.perf_counter() - t) * 1000)
                    await tr.rollback()
                out[label][f"batch {batch}"] = round(statistics.median(times[10:]), 3)
    finally:
        await c.close()
    return out


@contextlib.asynccontextmanager
async def schema_variant(
    conn: asyncpg.Connection,
    dbname: str,
    triggers_off: bool,
    indexes: dict[str, str],
    sync_off: bool,
) -> AsyncIterator[None]:
    """Disable the wake trigger on UPDATE, replace (or drop, with "") indexes, or turn
    synchronous_commit off for new connections; everything is restored afterwards."""
    original = {
        r[0]: r[1]
        for r in await conn.fetch(
            "select indexname, indexdef from pg_indexes where indexname = any($1::text[])",
            list(indexes),
        )
    }
    trigger = "alter table pgnotify.notifications {} trigger notifications_wake_update"
    try:
        if triggers_off:
            await conn.execute(trigger.format("disable"))
        for name, definition in indexes.items():
            await conn.execute(f"drop index pgnotify.{name}")
            if definition:
                await conn.execute(definition)
        if sync_off:
            await conn.execute(f'alter database "{dbname}" set synchronous_commit = off')
        yield
    finally:
        if sync_off:
            await conn.execute(f'alter database "{dbname}" reset synchronous_commit')
        for name in indexes:
            await conn.execute(f"drop index if exists pgnotify.{name}")
            await conn.execute(original[name])
        if triggers_off:
            await conn.execute(trigger.format("enable"))


async def postgres_costs(conn: asyncpg.Connection, url: str, dbname: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    await conn.execute(ds.RESET_QUEUE)
    await ds.insert_due(conn, 30_000, ["inapp"], uuid.uuid4().hex[:8])
    await conn.execute("analyze pgnotify.notifications")
    for batch in (1, 100):
        rows: dict[str, Any] = {}
        claims = [("queries.CLAIM_DUE (this version)", queries.CLAIM_DUE)]
        if inlined := await claim_with_contexts_inlined(conn):
            claims.append(("CLAIM_DUE with render_contexts()' body written inline", inlined))
        claims.append(("bare claim (no context, no re-check)", ds.BARE_CLAIM))
        for label, sql in claims:
            a: tuple[Any, ...] = (
                (batch, "probe", 120.0, []) if sql != ds.BARE_CLAIM else (batch, "probe")
            )
            ms, _ = await probes.median_explain(conn, sql, *a, repeat=7)
            rows[label] = {"ms": round(ms, 3), "us_per_row": round(ms * 1000 / batch, 1)}
        for name, after in (await probes._after_claim(conn, batch)).items():
            rows[name.upper()] = {
                "ms": round(after["execution_ms"], 3),
                "us_per_row": round(after["execution_ms"] * 1000 / batch, 1),
            }
        out[f"batch of {batch}"] = rows
    out["claim round trip as the daemon runs it (ms, planning included)"] = await claim_round_trips(
        conn, url
    )
    generic = await probes.generic_claim_plan(conn, batch=10)
    out["CLAIM_DUE under plan_cache_mode = force_generic_plan (batch 10)"] = generic
    out["functions"] = await probes.per_row_functions(conn)

    # The pool's reset query, which asyncpg runs on every release of a pooled connection.
    c = await asyncpg.connect(url)
    try:
        reset = c.get_reset_query()
        meter = CpuMeter([], dbname)
        meter.start()
        t = time.perf_counter()
        for _ in range(2000):
            await c.execute(reset)
        wall = time.perf_counter() - t
        cpu = meter.stop()
        out["pool reset query per release"] = {
            "query": reset,
            "round_trip_us": round(wall / 2000 * 1e6, 1),
            "postgres_cpu_us": round(cpu.postgres / 2000 * 1e6, 1),
            "client_cpu_us": round(cpu.bench / 2000 * 1e6, 1),
        }
    finally:
        await c.close()

    # The bare loop as it is and in variants of the schema (applied here, in this throw-away
    # database only, and undone): what each change of the hot table would give.
    index = "create index {0} on pgnotify.notifications ({1}) where status = 'pending'"
    variants: dict[str, Any] = {}
    for label, triggers_off, indexes, sync_off, one_update in (
        ("as is", False, {}, False, False),
        ("one UPDATE per row: lock, then mark sent, in one transaction", False, {}, False, True),
        ("without the wake trigger on UPDATE", True, {}, False, False),
        (
            "booking_id and customer_id indexes partial (where status = 'pending')",
            False,
            {
                "notifications_booking_id_idx": index.format(
                    "notifications_booking_id_idx", "booking_id"
                ),
                "notifications_customer_id_idx": index.format(
                    "notifications_customer_id_idx", "customer_id"
                ),
            },
            False,
            False,
        ),
        (
            "without the booking_id, customer_id and finished indexes",
            False,
            dict.fromkeys(
                (
                    "notifications_booking_id_idx",
                    "notifications_customer_id_idx",
                    "notifications_finished_idx",
                ),
                "",
            ),
            False,
            False,
        ),
        ("synchronous_commit = off", False, {}, True, False),
    ):
        async with schema_variant(conn, dbname, triggers_off, indexes, sync_off):
            runs = [
                await measure.bare_loop(
                    conn, url, rows=30_000, batch=100, loops=1, dbname=dbname, one_update=one_update
                )
                for _ in range(3)
            ]
        variants[label] = {
            "rows_per_s": round(statistics.median(r["rows_per_s"] for r in runs)),
            "postgres_cpu_us_per_row": statistics.median(
                r["cpu"]["postgres_us_per_item"] for r in runs
            ),
        }
    out["bare loop variants (1 connection, batch 100)"] = variants
    await conn.execute(ds.RESET_QUEUE)
    return out


# -- 4. latency anatomy -------------------------------------------------------------------


async def latency_anatomy(
    conn: asyncpg.Connection, dsn: str, workdir: Path, *, rate: float, seconds: float
) -> dict[str, Any]:
    """Where a booking's latency goes: an in-process daemon (3×10, the defaults) whose
    ``Worker.claim``, ``InappChannel.deliver`` and channel ``send`` are wrapped with clocks
    (nothing in pgnotify changes; the wrappers live in this process only), bookings at
    ``rate``/s, the SMTP and Twilio-shaped peers in a process of their own. The daemon
    shares this process's loop with the inserter only.
    """
    from pgnotify import logs
    from pgnotify.channels.email import SmtpChannel
    from pgnotify.channels.inapp import InappChannel
    from pgnotify.channels.sms import TwilioChannel
    from pgnotify.worker import Worker
    from tests.daemon.harness import make_settings, running

    claims: dict[int, tuple[float, float]] = {}
    spans: dict[str, dict[int, tuple[float, float]]] = {"inapp": {}, "email": {}, "sms": {}}
    originals = (Worker.claim, InappChannel.deliver, SmtpChannel.send, TwilioChannel.send)

    async def claim(self: Worker) -> Any:
        t0 = time.time()
        batch = await originals[0](self)
        t1 = time.time()
        for n in batch:
            claims[n.id] = (t0, t1)
        return batch

    async def deliver(self: InappChannel, pool: Any, daemon_id: str, items: Any) -> Any:
        t0 = time.time()
        done = await originals[1](self, pool, daemon_id, items)
        t1 = time.time()
        for n, _ in items:
            spans["inapp"][n.id] = (t0, t1)
        return done

    def timed_send(original: Any, channel: str) -> Any:
        async def send(self: Any, message: Any) -> Any:
            t0 = time.time()
            try:
                return await original(self, message)
            finally:
                spans[channel][message.notification_id] = (t0, time.time())

        return send

    peers = PeerProcess()
    Worker.claim = claim  # type: ignore[method-assign]
    InappChannel.deliver = deliver  # type: ignore[method-assign,assignment]
    SmtpChannel.send = timed_send(originals[2], "email")  # type: ignore[method-assign]
    TwilioChannel.send = timed_send(originals[3], "sms")  # type: ignore[method-assign]
    logs.configure("json", "warning")
    try:
        await conn.execute(ds.RESET_QUEUE)
        settings = make_settings(
            dsn,
            workdir / "anatomy-outbox",
            **peers.settings(),
            NOTIFICATION_POLL_INTERVAL=10.0,
            NOTIFICATION_HEALTH_ADDR="",
        )
        async with running(settings):
            await asyncio.sleep(0.5)
            meter = CpuMeter([], str(conninfo_to_dict(dsn)["dbname"]))
            meter.start()
            commits, achieved, _ = await measure.insert_at_rate(
                conn, rate=rate, seconds=seconds, offset=900_000
            )
            cpu = meter.stop()
            await measure.wait_drained(conn, 30)
            rows = await conn.fetch(
                "select id, booking_id, channel from pgnotify.notifications"
                " where kind = 'booking_confirmed' and status = 'sent'"
            )
    finally:
        Worker.claim, InappChannel.deliver, SmtpChannel.send, TwilioChannel.send = originals  # type: ignore[method-assign]
        peers.stop()
    parts: dict[str, dict[str, list[float]]] = {}
    for nid, booking, channel in rows:
        committed = commits.get(booking)
        if committed is None or nid not in claims or nid not in spans[channel]:
            continue
        c0, c1 = claims[nid]
        s0, s1 = spans[channel][nid]
        p = parts.setdefault(channel, {})
        for name, value in (
            ("commit → claim starts (NOTIFY, scheduler, worker wake-up)", c0 - committed),
            ("claim (CLAIM_DUE round trip, pool acquire/release)", c1 - c0),
            ("claimed → send starts (compose, other rows of the batch)", s0 - c1),
            ("send (SMTP conversation / Twilio POST / inbox statement)", s1 - s0),
            ("commit → send done", s1 - committed),
        ):
            p.setdefault(name, []).append(value * 1000)
    out: dict[str, Any] = {
        "rate": rate,
        "seconds": seconds,
        "achieved_rate": achieved,
        "other_load_cores": cpu.as_json(len(commits))["other_load_cores"],
    }
    for channel, named in parts.items():
        out[channel] = {}
        for name, values in named.items():
            values.sort()
            out[channel][name] = {
                f"p{q}": round(measure.percentile(values, q), 2) for q in (50, 95, 99)
            }
    return out


# -- report -----------------------------------------------------------------------------


def print_report(result: dict[str, Any]) -> None:
    for name, r in result["sampled"].items():
        if "error" in r:
            print(f"\n== {name}: {r['error']}")
            continue
        cpu = r["cpu"]
        print(
            f"\n== sampled: {name} — {r['per_s']:,.0f}/s with 1 worker × 100; daemon CPU "
            f"{cpu['daemon_us_per_item']} µs/notification (/proc), py-spy "
            f"{r['sampled_us_per_notification']} µs; Postgres CPU {cpu['postgres_us_per_item']}"
            f" µs; other load {cpu['other_load_cores']} cores"
        )
        for component, us in r["components_us"].items():
            print(f"  {us:8.1f} µs  {component}")
    if "isolated" in result:
        print("\n== isolated Python steps (µs per call)")
        for k, v in result["isolated"].items():
            print(f"  {v:8.2f} µs  {k}")
    print_anatomy(result.get("anatomy"))
    if "postgres" in result:
        print_postgres(result["postgres"])


def print_anatomy(a: dict[str, Any] | None) -> None:
    if not a:
        return
    print(
        f"\n== latency anatomy at {a['rate']:.0f} bookings/s (in-process daemon 3×10, ms;"
        f" other load {a['other_load_cores']} cores)"
    )
    for channel in ("inapp", "email", "sms"):
        for name, q in a.get(channel, {}).items():
            qs = "  ".join(f"{k} {v:7.2f}" for k, v in q.items())
            print(f"  {channel:6s} {qs}  {name}")


def print_postgres(pg: dict[str, Any]) -> None:
    for batch in (1, 100):
        print(f"\n== Postgres, batch of {batch} (server time, EXPLAIN ANALYZE, median of 7)")
        for k, v in pg[f"batch of {batch}"].items():
            print(f"  {v['ms']:8.3f} ms  {v['us_per_row']:8.1f} µs/row  {k}")
    print("\n== claim round trip as the daemon runs it (median, ms, planning included)")
    for label, v in pg["claim round trip as the daemon runs it (ms, planning included)"].items():
        print(f"  {v['batch 1']:7.3f} ms (1 row)  {v['batch 100']:7.3f} ms (100 rows)  {label}")
    g = pg["CLAIM_DUE under plan_cache_mode = force_generic_plan (batch 10)"]
    print(
        f"\n  generic plan of CLAIM_DUE (batch 10, 30,000 due): {g['execution_ms']:.2f} ms,"
        f" seq scans on {', '.join(g['seq_scans']) or 'nothing'}; custom plan"
        f" {g['custom_execution_ms']:.2f} ms"
    )
    f = pg["functions"]
    print(
        f"  {f['render_context_us']:8.1f} µs  render_context() alone ({f['context_bytes']:.0f} B)"
    )
    r = pg["pool reset query per release"]
    print(
        f"  {r['round_trip_us']:8.1f} µs  asyncpg pool reset query, round trip per release"
        f" (Postgres CPU {r['postgres_cpu_us']} µs, client {r['client_cpu_us']} µs)"
    )
    print("\n== bare loop variants (median of 3)")
    for k, v in pg["bare loop variants (1 connection, batch 100)"].items():
        cpu = v["postgres_cpu_us_per_row"]
        print(f"  {v['rows_per_s']:>8,}/s  Postgres CPU {cpu:6.1f} µs/row  {k}")


async def amain(args: argparse.Namespace) -> int:
    with contextlib.ExitStack() as stack:
        server = ds.find_server(stack)
        with (
            ds.fresh_database(server, keep=args.keep_db) as dsn,
            tempfile.TemporaryDirectory(prefix="pgnotify-profile-") as tmp,
        ):
            url = ds.as_url(dsn)
            dbname = str(conninfo_to_dict(dsn)["dbname"])
            conn = await asyncpg.connect(url)
            await ds.seed_world(conn)
            await ds.seed_bookings(conn)
            workdir = Path(tmp)
            result: dict[str, Any] = {"source": snapshot.source_info(), "sampled": {}}
            smtp = SmtpPeer().start()
            twilio = TwilioPeer().start()
            peers = {
                "SMTP_SERVER": smtp.host,
                "SMTP_PORT": smtp.port,
                "SMTP_SECURITY": "none",
                "TWILIO_ACCOUNT_SID": twilio.account_sid,
                "TWILIO_AUTH_TOKEN": twilio.auth_token,
                "TWILIO_PHONE_NUMBER": "+15550001111",
                "TWILIO_API_URL": twilio.base_url,
            }
            drains: tuple[tuple[str, list[str], int, dict[str, Any]], ...] = (
                ("in-app", ["inapp"], args.rows, {}),
                ("email → outbox", ["email"], args.rows // 3, {}),
                ("email → SMTP (aiosmtpd)", ["email"], args.rows // 3, peers),
                ("SMS → Twilio-shaped server", ["sms"], args.rows // 3, peers),
            )
            parts = set(args.only or ("sampled", "anatomy", "isolated", "postgres"))
            try:
                for name, channels, rows, extra in drains if "sampled" in parts else ():
                    print(f"… sampling {name}", file=sys.stderr, flush=True)
                    try:
                        result["sampled"][name] = await sampled_drain(
                            conn,
                            dsn,
                            workdir,
                            name=name.split()[0] + "-" + channels[0] + str(len(extra)),
                            channels=channels,
                            rows=rows,
                            rate=args.rate,
                            extra=extra,
                        )
                    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                        result["sampled"][name] = {"error": f"{type(exc).__name__}: {exc}"}
            finally:
                smtp.stop()
                twilio.stop()
            if "anatomy" in parts:
                print("… latency anatomy", file=sys.stderr, flush=True)
                result["anatomy"] = await latency_anatomy(
                    conn, dsn, workdir, rate=200.0, seconds=10.0
                )
            if "isolated" in parts:
                print("… isolated steps", file=sys.stderr, flush=True)
                result["isolated"] = await isolated_steps(conn, dsn)
            if "postgres" in parts:
                print("… postgres", file=sys.stderr, flush=True)
                result["postgres"] = await postgres_costs(conn, url, dbname)
            await conn.close()
    print_report(result)
    args.output.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"\nresults in {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__)
    p.add_argument("--rows", type=int, default=60_000, help="in-app rows (others: a third)")
    p.add_argument("--rate", type=int, default=1000, help="py-spy samples per second")
    p.add_argument(
        "--output", type=Path, default=snapshot.source_root() / "bench-results-profile.json"
    )
    p.add_argument("--in-place", action="store_true", help="run the working tree, not a copy")
    p.add_argument("--keep-db", action="store_true")
    p.add_argument(
        "--only",
        action="append",
        choices=("sampled", "anatomy", "isolated", "postgres"),
        help="run only these parts (repeatable)",
    )
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    if not (args.in_place or snapshot.inside_snapshot()):
        output = ["--output", str(args.output.resolve())]
        return snapshot.run_in_snapshot("benchmarks.profile", [*argv, *output])
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
