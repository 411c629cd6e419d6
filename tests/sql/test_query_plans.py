"""The daemon's statements use the indexes built for them (plans asserted, never times)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import asyncpg
import psycopg

from pgnotify import queries
from pgnotify.db import as_url, init_connection
from tests.factories import make_booking, make_world

Conn = psycopg.Connection[Any]


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


async def explain(dsn: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(
        as_url(dsn), server_settings={"plan_cache_mode": "force_custom_plan"}
    )
    try:
        await init_connection(conn)
        raw = await conn.fetchval(f"explain (format json) {sql}", *args)
    finally:
        await conn.close()
    doc = raw if isinstance(raw, list) else json.loads(raw)
    return list(nodes(doc[0]["Plan"]))


def history(db: Conn, pending: int, finished: int) -> None:
    """A queue that looks lived-in: mostly finished rows, some pending, statistics fresh."""
    booking = make_booking(db, make_world(db))
    db.execute(
        "insert into pgnotify.notifications (kind, channel, booking_id, recipient, status,"
        " run_at, occurrence, sent_at)"
        " select 'booking_confirmed', 'inapp', %s, gen_random_uuid()::text,"
        " case when g <= %s then 'pending' else 'sent' end, now() - interval '1 minute',"
        " 'plan:' || g, case when g > %s then now() end"
        " from generate_series(1, %s) g",
        (booking, pending, pending, pending + finished),
    )
    db.execute("analyze pgnotify.notifications")


async def test_the_claim_reads_the_partial_pending_index_not_the_table(
    db: Conn, clean_db: str
) -> None:
    history(db, pending=2_000, finished=20_000)
    plan = await explain(clean_db, queries.CLAIM_DUE, 100, "plan-test", 60.0, [])
    scans = [(n["Node Type"], n.get("Relation Name"), n.get("Index Name")) for n in plan]
    assert ("Index Scan", "notifications", "notifications_pending_run_at_idx") in scans
    assert not any(t == "Seq Scan" and rel == "notifications" for t, rel, _ in scans)


async def test_the_scheduler_reads_the_earliest_run_at_from_the_partial_index(
    db: Conn, clean_db: str
) -> None:
    history(db, pending=2_000, finished=20_000)
    plan = await explain(clean_db, queries.NEXT_RUN_AT, [])
    assert any(n.get("Index Name") == "notifications_pending_run_at_idx" for n in plan)
    assert not any(
        n["Node Type"] == "Seq Scan" and n.get("Relation Name") == "notifications" for n in plan
    )
