"""What the claim costs inside Postgres: ``EXPLAIN ANALYZE`` of the daemon's own statements.

Every probe runs in a transaction that is rolled back, so the queue is the same before
and after; each figure is the median of a few executions (server-side time, no network).
"""

from __future__ import annotations

import json
import statistics
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import asyncpg

from benchmarks import dataset as ds
from pgnotify import queries
from pgnotify.channels.base import InappMessage
from pgnotify.inbox import finish_args
from pgnotify.outcome import Outcome
from pgnotify.worker import to_claimed


def _nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", ()):
        yield from _nodes(child)


Setup = Callable[[asyncpg.Connection], Awaitable[tuple[Any, ...]]]


async def explain(
    conn: asyncpg.Connection, sql: str, *args: Any, setup: Setup | None = None
) -> dict[str, Any]:
    """``EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)`` of ``sql``, rolled back; ``setup`` runs
    first in the same transaction and returns the arguments."""
    tr = conn.transaction()
    await tr.start()
    try:
        if setup is not None:
            args = await setup(conn)
        raw = await conn.fetchval("explain (analyze, buffers, format json) " + sql, *args)
    finally:
        await tr.rollback()
    doc: dict[str, Any] = json.loads(raw)[0] if isinstance(raw, str) else raw[0]
    return doc


def plan_summary(doc: dict[str, Any]) -> dict[str, Any]:
    nodes = list(_nodes(doc["Plan"]))
    return {
        "execution_ms": doc["Execution Time"],
        "planning_ms": doc["Planning Time"],
        "indexes": sorted({n["Index Name"] for n in nodes if "Index Name" in n}),
        "seq_scans": sorted({n["Relation Name"] for n in nodes if n["Node Type"] == "Seq Scan"}),
        "shared_hit_blocks": doc["Plan"].get("Shared Hit Blocks"),
        "triggers_ms": {t["Trigger Name"]: t["Time"] for t in doc.get("Triggers", ())},
    }


def plan_text_lines(doc: dict[str, Any]) -> list[str]:
    """A compact text rendering: node type, relation/index, rows, total time."""
    out: list[str] = []

    def walk(node: dict[str, Any], depth: int) -> None:
        what = node["Node Type"]
        if "Index Name" in node:
            what += f" using {node['Index Name']}"
        elif "Relation Name" in node:
            what += f" on {node['Relation Name']}"
        loops = node.get("Actual Loops", 1)
        out.append(
            f"{'  ' * depth}{what}  rows={node.get('Actual Rows')} loops={loops}"
            f" time={node.get('Actual Total Time', 0):.3f}ms"
        )
        for child in node.get("Plans", ()):
            walk(child, depth + 1)

    walk(doc["Plan"], 0)
    return out


async def median_explain(
    conn: asyncpg.Connection, sql: str, *args: Any, repeat: int = 5, setup: Setup | None = None
) -> tuple[float, dict[str, Any]]:
    docs = [await explain(conn, sql, *args, setup=setup) for _ in range(repeat)]
    times = [d["Execution Time"] for d in docs]
    return statistics.median(times), docs[len(docs) // 2]


async def claim_probe(conn: asyncpg.Connection, *, backlog: int, batch: int) -> dict[str, Any]:
    """``queries.CLAIM_DUE`` of ``batch`` rows over ``backlog`` pending email rows (behind
    as many finished ones): before ANALYZE has seen the burst, after it, and again after
    half the backlog was claimed and finished (dead index entries ahead of the first due
    row, as in the middle of a drain, before autovacuum).
    """
    await conn.execute(ds.RESET_QUEUE)
    await conn.execute(ds.INSERT_HISTORY, backlog)
    await conn.execute("analyze pgnotify.notifications")
    await ds.insert_due(conn, backlog, ["email"], uuid.uuid4().hex[:8])
    out: dict[str, Any] = {"backlog": backlog, "batch": batch}
    claim_args: tuple[Any, ...] = (batch, "probe", 120.0, [])
    # As a burst meets it: the statistics still describe the table before the burst.
    ms, doc = await median_explain(conn, queries.CLAIM_DUE, *claim_args)
    out["stale_stats"] = {
        "claim_due": {**plan_summary(doc), "execution_ms": ms},
        "claim_due_plan": plan_text_lines(doc),
    }
    await conn.execute("analyze pgnotify.notifications")
    for phase in ("fresh", "half_drained"):
        if phase == "half_drained":
            for _ in range(backlog // 2 // batch):
                ids = [r[0] for r in await conn.fetch(ds.BARE_CLAIM, batch, "probe")]
                await conn.execute(ds.BARE_COMPLETE, ids, "probe")
        ms, doc = await median_explain(conn, queries.CLAIM_DUE, *claim_args)
        bare_ms, bare_doc = await median_explain(conn, ds.BARE_CLAIM, batch, "probe")
        out[phase] = {
            "claim_due": {**plan_summary(doc), "execution_ms": ms},
            "claim_due_plan": plan_text_lines(doc),
            "bare_claim": {**plan_summary(bare_doc), "execution_ms": bare_ms},
        }
        if phase == "fresh":
            out["after_claim"] = await _after_claim(conn, batch)
            out["generic_plan"] = await generic_claim_plan(conn, batch=10)
    await conn.execute(ds.RESET_QUEUE)
    return out


async def _after_claim(conn: asyncpg.Connection, batch: int) -> dict[str, Any]:
    """The statements that finish a batch, each after a real claim of ``batch`` rows in
    the same (rolled back) transaction: ``lock_inapp`` then ``FINISH_INAPP`` as the in-app
    path runs them (all sent), and ``RECORD_OUTCOMES`` after ``CLAIM_DUE`` as it runs for
    email and SMS (all sent)."""
    await ds.insert_due(conn, batch, ["inapp"], uuid.uuid4().hex[:8])

    async def inapp_args(c: asyncpg.Connection) -> tuple[Any, ...]:
        batch_ = to_claimed(await c.fetch(queries.lock_inapp(batch)))
        outcomes = [Outcome(n.id, "sent") for n in batch_]
        messages = {n.id: InappMessage(n.id, "Title", "Body text of the message") for n in batch_}
        args = finish_args(batch_, outcomes, messages, "probe")
        data = [json.dumps(d) for d in args[6]]  # this connection has no jsonb codec
        return (*args[:6], data, *args[7:])

    async def outcome_args(c: asyncpg.Connection) -> tuple[Any, ...]:
        ids = [r[0] for r in await c.fetch(queries.CLAIM_DUE, batch, "probe", 120.0, [])]
        n = len(ids)
        return ids, ["sent"] * n, [None] * n, [None] * n, ["<id@x>"] * n, [False] * n, "probe"

    out = {}
    for name, sql, setup in (
        ("finish_inapp", queries.FINISH_INAPP, inapp_args),
        ("record_outcomes", queries.RECORD_OUTCOMES, outcome_args),
    ):
        ms, doc = await median_explain(conn, sql, setup=setup)
        out[name] = {**plan_summary(doc), "execution_ms": ms}
    return out


# -- bench_contexts --
# render_contexts() as the claim calls it: one call for a set of bookings (here every
# seeded one, no payment). Less the cost of building its two arguments alone.
BENCH_CONTEXTS = """
select count(*) from pgnotify.render_contexts(
    array(select id from public.bench_bookings),
    array(select null::uuid from public.bench_bookings))
"""
BENCH_CONTEXT_ARGS = """
select cardinality(array(select id from public.bench_bookings))
     + cardinality(array(select null::uuid from public.bench_bookings))
"""
# What the client then receives per row: the context as JSON text.
BENCH_CONTEXT_BYTES = """
select avg(length(context::text))::float8 from pgnotify.render_contexts(
    array(select id from public.bench_bookings),
    array(select null::uuid from public.bench_bookings))
"""


async def per_row_functions(conn: asyncpg.Connection) -> dict[str, float]:
    """Server-side µs per row of ``render_contexts()`` (one set-based call over every
    seeded booking, divided by their number) and of ``stale_reason()``, each less the same
    query without the function.
    """
    count = await conn.fetchval("select count(*) from public.bench_bookings")
    args, _ = await median_explain(conn, BENCH_CONTEXT_ARGS)
    ctx, _ = await median_explain(conn, BENCH_CONTEXTS)
    stale, _ = await median_explain(
        conn,
        "select pgnotify.stale_reason('reminder_24h', 'manual:x', k.status, k.starts_at)"
        " from public.bench_bookings b join booking.bookings k on k.id = b.id",
    )
    joined, _ = await median_explain(
        conn,
        "select k.status from public.bench_bookings b join booking.bookings k on k.id = b.id",
    )
    size = await conn.fetchval(BENCH_CONTEXT_BYTES)
    return {
        "rows": count,
        "render_contexts_us": (ctx - args) / count * 1000,
        "stale_reason_us": (stale - joined) / count * 1000,
        "context_bytes": size,
    }


async def generic_claim_plan(conn: asyncpg.Connection, *, batch: int) -> dict[str, Any]:
    """``CLAIM_DUE`` as a prepared statement under ``plan_cache_mode = force_generic_plan``
    (what Postgres may switch to after five executions) and under the custom plan."""
    out: dict[str, Any] = {}
    for mode in ("force_custom_plan", "force_generic_plan"):
        name = f"bench_claim_{mode}_{uuid.uuid4().hex[:6]}"
        tr = conn.transaction()
        await tr.start()
        try:
            await conn.execute(f"set local plan_cache_mode = {mode}")
            await conn.execute(f"prepare {name} (int, text, float8, text[]) as {queries.CLAIM_DUE}")
            raw = await conn.fetchval(
                f"explain (analyze, buffers, format json) execute {name}"
                f"({batch}, 'probe', 120, '{{}}')"
            )
        finally:
            await tr.rollback()
            await conn.execute(f"deallocate {name}")
        doc = json.loads(raw)[0]
        summary = plan_summary(doc)
        if mode == "force_custom_plan":
            out["custom_execution_ms"] = summary["execution_ms"]
        else:
            out.update(summary)
            out["plan"] = plan_text_lines(doc)
    return out


async def planning_ms(conn: asyncpg.Connection, *, batch: int = 100) -> dict[str, float]:
    """Median planning time of the daemon's batch statements (``EXPLAIN (SUMMARY)``, not
    executed): what every execution pays when plans are not reused."""
    ids = list(range(1, batch + 1))
    n = len(ids)
    statements = {
        "CLAIM_DUE": (queries.CLAIM_DUE, (batch, "probe", 120.0, [])),
        "lock_inapp": (queries.lock_inapp(batch), ()),
        "FINISH_INAPP": (
            queries.FINISH_INAPP,
            (
                ids,
                ["sent"] * n,
                [None] * n,
                [None] * n,
                ["t"] * n,
                ["b"] * n,
                ["{}"] * n,
                [None] * n,
                [None] * n,
                [False] * n,
                "probe",
            ),
        ),
        "RECORD_OUTCOMES": (
            queries.RECORD_OUTCOMES,
            (ids, ["sent"] * n, [None] * n, [None] * n, [None] * n, [False] * n, "probe"),
        ),
    }
    out = {}
    for name, (sql, args) in statements.items():
        times = []
        for _ in range(5):
            raw = await conn.fetchval("explain (summary, format json) " + sql, *args)
            times.append(json.loads(raw)[0]["Planning Time"])
        out[name] = statistics.median(times)
    return out
