"""Every state change the daemon makes is conditional on who holds the row.

Two daemons, `daemon-a` and `daemon-b`, run the real statements of `pgnotify.queries`:
A claims a row and stalls past its lease, B's rescuer puts the row back and B claims it.
Whatever A then does with its stale claim (record an outcome, release at shutdown) must
change nothing: the row is B's. In-app rows take no lease: they are locked and written in
one transaction, once.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import psycopg
import pytest

from pgnotify import queries
from pgnotify.channels.base import InappMessage
from pgnotify.inbox import finish_inapp
from pgnotify.outcome import Outcome
from pgnotify.worker import to_claimed
from tests.factories import claim, daemon_connection, deliver_inapp, lone_notification, record

Conn = psycopg.Connection[Any]

COLUMNS = (
    "status, attempts, claimed_by, lease_until, run_at, last_error, provider_id, sent_at,"
    " updated_at"
)


def snapshot(db: Conn, nid: int) -> tuple[Any, ...]:
    row = db.execute(f"select {COLUMNS} from pgnotify.notifications where id = %s", (nid,))
    result = row.fetchone()
    assert result is not None
    return tuple(result)


async def reclaimed_by_b(conn: asyncpg.Connection, nid: int) -> None:
    """A claims ``nid`` under a short lease that expires; B rescues and re-claims it."""
    assert [r["id"] for r in await claim(conn, "daemon-a", lease=0.05)] == [nid]
    await asyncio.sleep(0.3)
    rescued = await conn.fetch(queries.RESCUE_EXPIRED_LEASES, 3, [])
    assert [r["id"] for r in rescued] == [nid]
    (again,) = await claim(conn, "daemon-b", lease=600)
    assert (again["id"], again["attempts"]) == (nid, 2)


@pytest.mark.parametrize(
    ("status", "fields"),
    [
        ("sent", {"provider_id": "<a-sent-it@example.com>"}),
        ("failed", {"last_error": "550 mailbox unavailable"}),
        ("pending", {"delay": 60.0, "last_error": "421 try later"}),
        ("pending", {"delay": 0.0, "last_error": "released", "release": True}),
        ("skipped", {"last_error": "booking no longer exists"}),
    ],
)
async def test_a_stale_daemons_outcome_does_not_touch_a_row_another_daemon_reclaimed(
    db: Conn, clean_db: str, status: str, fields: dict[str, Any]
) -> None:
    """A's late outcome, whatever it says, matches no row and changes nothing; B's own
    outcome for the same row then lands."""
    nid = lone_notification(db)
    async with daemon_connection(clean_db) as conn:
        await reclaimed_by_b(conn, nid)
        before = snapshot(db, nid)

        assert await record(conn, "daemon-a", [nid], status, **fields) == []
        assert snapshot(db, nid) == before

        assert await record(conn, "daemon-b", [nid], "sent", provider_id="<b@x>") == [nid]
    after = db.execute(
        "select status, claimed_by, provider_id, attempts from pgnotify.notifications"
        " where id = %s",
        (nid,),
    ).fetchone()
    assert after == ("sent", "daemon-b", "<b@x>", 2)


async def test_a_late_outcome_for_a_rescued_row_not_yet_reclaimed_changes_nothing(
    db: Conn, clean_db: str
) -> None:
    """The rescue leaves `claimed_by` as it was, so the guard must also require `sending`:
    a row already back in `pending` is not A's to finish, even though A's name is on it."""
    nid = lone_notification(db)
    async with daemon_connection(clean_db) as conn:
        assert [r["id"] for r in await claim(conn, "daemon-a", lease=0.05)] == [nid]
        await asyncio.sleep(0.3)
        assert [r["id"] for r in await conn.fetch(queries.RESCUE_EXPIRED_LEASES, 3, [])] == [nid]
        before = snapshot(db, nid)
        assert before[0] == "pending"

        assert await record(conn, "daemon-a", [nid], "sent", provider_id="<late@x>") == []
    assert snapshot(db, nid) == before


async def test_an_inapp_row_is_never_leased_and_a_late_finish_writes_nothing(
    db: Conn, clean_db: str
) -> None:
    """The lease claim never takes an in-app row, and the in-app lock committed on its own
    leaves the row pending and unclaimed. Delivered once, a second delivery (a daemon whose
    lock raced the first) finds nothing, and a late finish of the row as another daemon had
    read it writes nothing: one message, the first daemon's, and the row stays sent."""
    nid = lone_notification(db, channel="inapp")
    async with daemon_connection(clean_db) as conn:
        before = snapshot(db, nid)
        assert await claim(conn, "daemon-a") == []
        read_by_b = to_claimed(await conn.fetch(queries.lock_inapp(100)))
        assert [n.id for n in read_by_b] == [nid]
        assert snapshot(db, nid) == before

        assert await deliver_inapp(conn, "daemon-a", title="A") == [nid]
        assert await deliver_inapp(conn, "daemon-b", title="B") == []
        sent = snapshot(db, nid)
        late = [Outcome(nid, "failed", last_error="late")]
        assert await finish_inapp(conn, "daemon-b", read_by_b, late, {}) == set()
        sent_to_b = [Outcome(nid, "sent")]
        message = {nid: InappMessage(nid, "B", "late")}
        assert await finish_inapp(conn, "daemon-b", read_by_b, sent_to_b, message) == set()
    assert db.execute("select title from pgnotify.inbox").fetchall() == [("A",)]
    assert snapshot(db, nid) == sent
    assert sent[:3] == ("sent", 1, "daemon-a")


async def test_a_stale_daemons_shutdown_release_leaves_the_reclaimed_row_with_its_holder(
    db: Conn, clean_db: str
) -> None:
    """At shutdown A gives back only what it still holds: B's row stays B's, in flight,
    with B's attempt counted."""
    nid = lone_notification(db)
    async with daemon_connection(clean_db) as conn:
        await reclaimed_by_b(conn, nid)
        before = snapshot(db, nid)
        mine = lone_notification(db)
        (own,) = await claim(conn, "daemon-a", lease=600)
        assert own["id"] == mine

        released = await conn.fetch(queries.RELEASE_CLAIMED, "daemon-a", [])
    assert [r["id"] for r in released] == [mine]
    assert snapshot(db, nid) == before
    status, attempts, _, lease_until = snapshot(db, mine)[:4]
    assert (status, attempts, lease_until) == ("pending", 0, None)


async def test_an_inapp_lock_that_never_commits_leaves_the_row_as_it_was(
    db: Conn, clean_db: str
) -> None:
    """A daemon that dies holding in-app rows (its connection gone, its transaction rolled
    back) leaves them pending, as they were; meanwhile another daemon skips them instead of
    waiting, and delivers them once the lock is gone."""
    nid = lone_notification(db, channel="inapp")
    before = snapshot(db, nid)
    async with daemon_connection(clean_db) as a, daemon_connection(clean_db) as b:
        dying = a.transaction()
        await dying.start()
        assert [r["id"] for r in await a.fetch(queries.lock_inapp(100))] == [nid]
        assert await deliver_inapp(b, "daemon-b") == []

        db.execute("select pg_terminate_backend(%s)", (a.get_server_pid(),))
        for _ in range(100):  # until the backend has exited and its locks with it
            if await deliver_inapp(b, "daemon-b"):
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the dead transaction's lock outlived its backend")
    after = snapshot(db, nid)
    assert before[0] == "pending" and after[:3] == ("sent", 1, "daemon-b")
    assert db.execute("select title from pgnotify.inbox").fetchall() == [("Title",)]
