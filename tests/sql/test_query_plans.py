"""The daemon's statements use the indexes built for them, and the lifecycle triggers run
their helpers inlined (plans and calls asserted, never times)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import psycopg

from pgnotify import queries
from pgnotify.db import as_url, init_connection
from tests.factories import make_booking, make_payment, make_world

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


def history(db: Conn, pending: int, finished: int, channel: str = "inapp") -> None:
    """A queue that looks lived-in: mostly finished rows, some pending, statistics fresh."""
    booking = make_booking(db, make_world(db))
    db.execute(
        "insert into pgnotify.notifications (kind, channel, booking_id, recipient, status,"
        " run_at, occurrence, sent_at)"
        " select 'booking_confirmed', %s, %s, gen_random_uuid()::text,"
        " case when g <= %s then 'pending' else 'sent' end, now() - interval '1 minute',"
        " 'plan:' || g, case when g > %s then now() end"
        " from generate_series(1, %s) g",
        (channel, booking, pending, pending, pending + finished),
    )
    db.execute("analyze pgnotify.notifications")


def index_scans(plan: list[dict[str, Any]]) -> set[str]:
    """The queue's indexes a plan reads; it must never read the queue table whole."""
    assert not any(
        n["Node Type"] == "Seq Scan" and n.get("Relation Name") == "notifications" for n in plan
    )
    return {
        n["Index Name"]
        for n in plan
        if n.get("Relation Name") == "notifications" and "Index Name" in n
    }


async def test_the_lease_claim_reads_its_partial_pending_index_not_the_table(
    db: Conn, clean_db: str
) -> None:
    history(db, pending=2_000, finished=20_000, channel="email")
    plan = await explain(clean_db, queries.CLAIM_DUE, 100, "plan-test", 60.0, [])
    assert "notifications_pending_run_at_idx" in index_scans(plan)


async def test_the_inapp_lock_reads_its_own_partial_pending_index_not_the_table(
    db: Conn, clean_db: str
) -> None:
    """In-app rows have an index of their own: neither claim walks past the other's
    backlog (here 2,000 due email rows ahead of the in-app ones)."""
    history(db, pending=2_000, finished=20_000, channel="email")
    history(db, pending=100, finished=0, channel="inapp")
    plan = await explain(clean_db, queries.lock_inapp(100))
    assert index_scans(plan) == {"notifications_pending_inapp_idx"}


async def test_the_scheduler_reads_the_earliest_run_at_from_the_partial_indexes(
    db: Conn, clean_db: str
) -> None:
    history(db, pending=2_000, finished=20_000)
    plan = await explain(clean_db, queries.NEXT_RUN_AT, [])
    assert index_scans(plan) == {
        "notifications_pending_run_at_idx",
        "notifications_pending_inapp_idx",
    }


def calls_in_one_transaction(dsn: str, statement: Callable[[Conn], object]) -> dict[str, int]:
    """The functions a statement ran (name -> calls), counted in the first transaction of
    a new session (a session's counts of earlier transactions may not be flushed yet)."""
    with psycopg.connect(dsn) as conn:
        conn.execute("set track_functions = 'all'")
        statement(conn)
        rows = conn.execute(
            "select funcname, calls from pg_stat_xact_user_functions where schemaname = 'pgnotify'"
        ).fetchall()
        conn.commit()
    return {name: calls for name, calls in rows}


def queued_kinds(db: Conn) -> set[str]:
    return {r[0] for r in db.execute("select kind from pgnotify.notifications").fetchall()}


def test_a_one_booking_insert_runs_its_helpers_inlined(
    db: Conn, clean_db: str, quiet_hours: Any
) -> None:
    """The occurrence keys, reminder rules and quiet hours are inlined into the trigger's
    cached plans: a non-inlined SQL function is set up again on every call, which made a
    one-booking INSERT several times dearer (issue 15)."""
    world = make_world(db)
    calls = calls_in_one_transaction(clean_db, lambda c: make_booking(c, world))
    assert calls["on_bookings_inserted"] == 1
    assert calls["enqueue"] == 1
    helpers = {"time_key", "version_key", "starts_key", "reminder_events", "held_reminder"}
    assert not helpers & calls.keys()
    # It did queue what those helpers compute.
    assert {"booking_confirmed", "reminder_24h", "reminder_2h"} <= queued_kinds(db)


def test_statements_that_queue_nothing_do_not_call_enqueue(db: Conn, clean_db: str) -> None:
    world = make_world(db)
    calls = calls_in_one_transaction(clean_db, lambda c: make_booking(c, world, status="pending"))
    assert calls == {"on_bookings_inserted": 1}
    booking = make_booking(db, world, status="pending")
    calls = calls_in_one_transaction(clean_db, lambda c: make_payment(c, booking, status="pending"))
    assert calls == {"on_payments_changed": 1}
    assert queued_kinds(db) == set()


def test_a_payment_statement_runs_one_trigger_function(db: Conn, clean_db: str) -> None:
    """Every payment rule (succeeded, failed, refunded) runs in one function per statement."""
    booking = make_booking(db, make_world(db), status="pending")
    calls = calls_in_one_transaction(
        clean_db, lambda c: make_payment(c, booking, status="refunded")
    )
    assert calls["on_payments_changed"] == 1
    assert calls["enqueue"] == 1
    assert "payment_refunded" in queued_kinds(db)
