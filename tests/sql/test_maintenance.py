"""Maintenance in SQL: the retention purge and the rescue of expired leases.

Both are run as the daemon runs them: `pgnotify.purge` through `queries.PURGE_FINISHED`,
the rescue through `queries.RESCUE_EXPIRED_LEASES`, over asyncpg.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import psycopg
import pytest

from pgnotify import queries
from tests.factories import (
    claim,
    daemon_connection,
    deliver_inapp,
    lone_notification,
    make_world,
    record,
)

Conn = psycopg.Connection[Any]

MAX_RETRIES = 3  # NOTIFICATION_MAX_RETRIES: retries after the first attempt
RETENTION_DAYS = 90

# What retention does with each status of the queue's check constraint.
FINISHED = {"sent", "cancelled", "skipped"}  # deleted once older than the retention
KEPT = {"pending", "sending"}  # in the queue: never deleted, whatever their age
DEAD_LETTER = "failed"  # kept for manual review (CONTRACT.md §5), never purged


def queue_statuses(db: Conn) -> set[str]:
    """The statuses `pgnotify.notifications` allows, read from its check constraint."""
    rows = db.execute(
        "select pg_get_constraintdef(oid) from pg_constraint"
        " where conrelid = 'pgnotify.notifications'::regclass and contype = 'c'"
    ).fetchall()
    (definition,) = [d for (d,) in rows if d.startswith("CHECK ((status = ANY")]
    return set(re.findall(r"'(\w+)'::text", definition))


def row_in(db: Conn, status: str, *, age_days: float, **world: Any) -> int:
    """One queue row in ``status``, last changed ``age_days`` ago."""
    nid = lone_notification(db, email=f"{status}.{age_days}@example.com", **world)
    db.execute(
        "update pgnotify.notifications set status = %s,"
        " lease_until = case when %s = 'sending' then now() + interval '1 minute' end,"
        " sent_at = case when %s = 'sent' then now() end,"
        " created_at = now() - make_interval(days => %s + 1),"
        " updated_at = now() - make_interval(secs => %s * 86400)"
        " where id = %s",
        (status, status, status, int(age_days), age_days, nid),
    )
    return nid


def surviving(db: Conn, ids: list[int]) -> set[int]:
    return {
        i for (i,) in db.execute("select id from pgnotify.notifications where id = any(%s)", (ids,))
    }


async def purge(dsn: str, days: int = RETENTION_DAYS, limit: int = 5000) -> int:
    async with daemon_connection(dsn) as conn:
        return int(await conn.fetchval(queries.PURGE_FINISHED, days, limit))


# -- the retention purge ---------------------------------------------------------------


def test_every_queue_status_has_a_retention_rule(db: Conn) -> None:
    """A status added to the queue must be sorted here: purged when finished, or kept."""
    assert queue_statuses(db) == FINISHED | KEPT | {DEAD_LETTER}


async def test_the_purge_deletes_old_finished_rows_and_never_pending_or_sending_ones(
    db: Conn, clean_db: str
) -> None:
    """Sent, cancelled and skipped rows past the retention go; queued and in-flight rows
    stay, however old; nothing younger than the retention goes."""
    old = {s: row_in(db, s, age_days=400) for s in FINISHED | KEPT}
    young = {s: row_in(db, s, age_days=1) for s in FINISHED | KEPT}

    deleted = await purge(clean_db)

    assert deleted == len(FINISHED)
    everything = list(old.values()) + list(young.values())
    assert surviving(db, everything) == {old[s] for s in KEPT} | set(young.values())


async def test_the_purge_keeps_dead_letters_for_manual_review(db: Conn, clean_db: str) -> None:
    """`failed` rows are kept until an operator retries or deletes them (CONTRACT.md §5):
    retention never deletes them, however old."""
    dead = row_in(db, DEAD_LETTER, age_days=400)
    sent = row_in(db, "sent", age_days=400)

    assert await purge(clean_db) == 1
    assert surviving(db, [dead, sent]) == {dead}
    assert [i for (i,) in db.execute("select id from pgnotify.dead_letters")] == [dead]


async def test_the_age_cutoff_is_the_last_change_not_the_creation(db: Conn, clean_db: str) -> None:
    """A row is purged when its last change (`updated_at`) is older than the retention:
    one day past it goes, one day short of it stays, even when created long before."""
    past = row_in(db, "sent", age_days=RETENTION_DAYS + 1)
    short = row_in(db, "sent", age_days=RETENTION_DAYS - 1)
    db.execute(
        "update pgnotify.notifications set created_at = now() - interval '2 years' where id = %s",
        (short,),
    )

    assert await purge(clean_db) == 1
    assert surviving(db, [past, short]) == {short}


async def test_the_purge_deletes_at_most_its_limit_and_leaves_the_rest_for_the_next_call(
    db: Conn, clean_db: str
) -> None:
    """Each call deletes at most `limit` rows and returns how many it deleted, so a large
    backlog goes in short transactions until a call returns less than the limit."""
    world = make_world(db)
    ids = [row_in(db, "sent", age_days=400, world=world) for _ in range(25)]

    counts = [await purge(clean_db, limit=10) for _ in range(4)]

    assert counts == [10, 10, 5, 0]
    assert surviving(db, ids) == set()


async def test_purging_a_delivered_inapp_notification_keeps_the_inbox_message(
    db: Conn, clean_db: str
) -> None:
    """The inbox is the customer's, not the queue's history: purging the notification that
    delivered an in-app message leaves the message (and its read state) untouched."""
    nid = lone_notification(db, channel="inapp")
    async with daemon_connection(clean_db) as conn:
        delivered = await deliver_inapp(conn, "daemon-a", title="Booked", body="See you soon")
        assert delivered == [nid]
    db.execute(
        "update pgnotify.notifications set updated_at = now() - interval '400 days' where id = %s",
        (nid,),
    )

    assert await purge(clean_db) == 1
    assert surviving(db, [nid]) == set()
    assert db.execute(
        "select notification_id, title, body, read_at from pgnotify.inbox"
    ).fetchall() == [(nid, "Booked", "See you soon", None)]


# -- the rescue of expired leases ------------------------------------------------------


async def expire(seconds: float = 0.3) -> None:
    """Outlive a lease taken with ``lease=0.05`` (the database's clock decides)."""
    await asyncio.sleep(seconds)


def state(db: Conn, nid: int) -> dict[str, Any]:
    with db.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(
            "select status, attempts, claimed_by, lease_until, last_error,"
            " run_at <= now() as due from pgnotify.notifications where id = %s",
            (nid,),
        )
        row = cur.fetchone()
    assert row is not None
    return row


async def rescue(dsn: str, own_unrecorded: list[int] | None = None) -> list[int]:
    async with daemon_connection(dsn) as conn:
        rows = await conn.fetch(queries.RESCUE_EXPIRED_LEASES, MAX_RETRIES, own_unrecorded or [])
    return sorted(int(r["id"]) for r in rows)


async def test_an_expired_lease_goes_back_to_pending_with_its_attempt_counted(
    db: Conn, clean_db: str
) -> None:
    """A row left in `sending` past its lease is due again at once, its lease cleared and
    the reason named; the attempt stays counted (the send may have happened). A row whose
    lease still runs is another daemon's work and is left alone."""
    world = make_world(db)
    dead = lone_notification(db, world=world)
    async with daemon_connection(clean_db) as conn:
        assert [r["id"] for r in await claim(conn, "dead-daemon", lease=0.05)] == [dead]
        live = lone_notification(db, world=world)
        assert [r["id"] for r in await claim(conn, "live-daemon", lease=600)] == [live]
    await expire()

    assert await rescue(clean_db) == [dead]

    row = state(db, dead)
    assert row["status"] == "pending"
    assert row["attempts"] == 1
    assert row["lease_until"] is None
    assert row["due"] is True
    assert row["last_error"].startswith("lease expired while dead-daemon held it")
    assert "attempts exhausted" not in row["last_error"]
    still = state(db, live)
    assert (still["status"], still["claimed_by"], still["attempts"]) == (
        "sending",
        "live-daemon",
        1,
    )
    assert still["lease_until"] is not None


@pytest.mark.parametrize(
    ("attempts_before_claim", "rescued_to"),
    [
        (MAX_RETRIES - 1, "pending"),  # attempt number MAX_RETRIES: retries remain
        (MAX_RETRIES, "failed"),  # attempt number MAX_RETRIES + 1 was the last one
        (MAX_RETRIES + 5, "failed"),
    ],
)
async def test_an_expired_row_whose_attempts_are_spent_is_dead_lettered(
    db: Conn, clean_db: str, attempts_before_claim: int, rescued_to: str
) -> None:
    """The first attempt plus NOTIFICATION_MAX_RETRIES retries is the budget: a row whose
    last allowed attempt outlived its lease (it may be what kills daemons) ends `failed`
    with the reason, instead of going round again."""
    nid = lone_notification(db)
    db.execute(
        "update pgnotify.notifications set attempts = %s where id = %s",
        (attempts_before_claim, nid),
    )
    async with daemon_connection(clean_db) as conn:
        (claimed,) = await claim(conn, "dead-daemon", lease=0.05)
    assert claimed["attempts"] == attempts_before_claim + 1
    await expire()

    assert await rescue(clean_db) == [nid]

    row = state(db, nid)
    assert row["status"] == rescued_to
    assert row["attempts"] == attempts_before_claim + 1
    assert row["lease_until"] is None
    assert row["last_error"].startswith("lease expired while dead-daemon held it")
    assert row["last_error"].endswith("; attempts exhausted") == (rescued_to == "failed")
    dead_letters = [i for (i,) in db.execute("select id from pgnotify.dead_letters")]
    assert dead_letters == ([nid] if rescued_to == "failed" else [])


async def test_the_rescuer_leaves_its_own_unrecorded_rows_alone(db: Conn, clean_db: str) -> None:
    """A daemon that still holds outcomes it could not record yet passes their ids: those
    rows stay `sending` and claimed by it, so the outcome still lands when the database
    answers; its other expired rows (a claim whose reply was lost) are rescued."""
    world = make_world(db)
    held = lone_notification(db, world=world)
    lost = lone_notification(db, world=world)
    async with daemon_connection(clean_db) as conn:
        claimed = sorted(r["id"] for r in await claim(conn, "daemon-a", lease=0.05))
        assert claimed == sorted([held, lost])
        await expire()

        assert await rescue(clean_db, own_unrecorded=[held]) == [lost]
        assert state(db, held)["status"] == "sending"
        assert state(db, held)["claimed_by"] == "daemon-a"
        assert state(db, lost)["status"] == "pending"

        assert await record(conn, "daemon-a", [held], "sent", provider_id="<m@x>") == [held]
    assert state(db, held)["status"] == "sent"
