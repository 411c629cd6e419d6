"""Retention of the in-app inbox: read messages older than the retention are purged.

`pgnotify.inbox` used to grow for ever. Read messages created more than
``NOTIFICATION_RETENTION_DAYS`` ago now go, in batches, through `pgnotify.purge_inbox`
(queries.PURGE_READ_INBOX, run here as the daemon's role runs it); unread ones stay,
whatever their age, so nothing the customer has not seen disappears.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgnotify import queries
from tests.factories import daemon_connection

Conn = psycopg.Connection[Any]

LOGIN = "pgnotify_test_inbox_retention"
RETENTION_DAYS = 90


@pytest.fixture
def daemon_dsn(db: Conn, clean_db: str) -> str:
    """A DSN for a LOGIN role whose only rights come from `pgnotify_daemon`."""
    db.execute(
        f"do $$ begin if not exists (select 1 from pg_roles where rolname = '{LOGIN}')"
        f" then create role {LOGIN} login; end if; end $$"
    )
    db.execute(f"grant pgnotify_daemon to {LOGIN}")
    params = conninfo_to_dict(clean_db)
    params["user"] = LOGIN
    return make_conninfo("", **params)  # type: ignore[arg-type]


def message(db: Conn, *, age_days: float, read_days_ago: float | None) -> int:
    """One inbox message created ``age_days`` ago, read ``read_days_ago`` (None: unread)."""
    row = db.execute(
        "insert into pgnotify.inbox (user_id, kind, title, body, created_at, read_at)"
        " values (%s, 'booking_confirmed', 'Booked', 'See you',"
        "         now() - make_interval(secs => %s * 86400),"
        "         now() - make_interval(secs => %s * 86400)) returning id",
        (uuid.uuid4(), age_days, read_days_ago),
    ).fetchone()
    assert row is not None
    return int(row[0])


def remaining(db: Conn) -> set[int]:
    return {i for (i,) in db.execute("select id from pgnotify.inbox").fetchall()}


async def purge_inbox(dsn: str, limit: int = 5000) -> int:
    async with daemon_connection(dsn) as conn:
        return int(await conn.fetchval(queries.PURGE_READ_INBOX, RETENTION_DAYS, limit))


async def test_read_messages_older_than_the_retention_are_purged_unread_ones_kept(
    db: Conn, daemon_dsn: str
) -> None:
    """Old and read: gone (also when read only yesterday: age is from creation). Old but
    unread, or read but recent: kept."""
    old_read = message(db, age_days=RETENTION_DAYS + 1, read_days_ago=RETENTION_DAYS)
    old_read_lately = message(db, age_days=RETENTION_DAYS + 1, read_days_ago=1)
    old_unread = message(db, age_days=400, read_days_ago=None)
    recent_read = message(db, age_days=RETENTION_DAYS - 1, read_days_ago=1)

    assert await purge_inbox(daemon_dsn) == 2
    assert remaining(db) == {old_unread, recent_read}
    assert old_read not in remaining(db) and old_read_lately not in remaining(db)
    assert await purge_inbox(daemon_dsn) == 0


async def test_the_inbox_purge_deletes_at_most_its_limit_per_call(db: Conn, clean_db: str) -> None:
    """A large backlog goes in short transactions, as the queue's purge does."""
    for _ in range(25):
        message(db, age_days=RETENTION_DAYS + 5, read_days_ago=RETENTION_DAYS)
    assert [await purge_inbox(clean_db, limit=10) for _ in range(4)] == [10, 10, 5, 0]
    assert remaining(db) == set()


def test_the_daemon_role_still_cannot_delete_inbox_messages_itself(daemon_dsn: str) -> None:
    """It purges through the function only: no message can be taken back otherwise."""
    with (
        psycopg.connect(daemon_dsn, autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute("delete from pgnotify.inbox")


def test_nobody_but_the_daemon_role_may_call_the_inbox_purge(db: Conn) -> None:
    """EXECUTE is closed to PUBLIC: an application role cannot empty the inbox with it."""
    assert db.execute(
        "select has_function_privilege('public', 'pgnotify.purge_inbox(interval, int)',"
        " 'execute'), has_function_privilege('pgnotify_daemon',"
        " 'pgnotify.purge_inbox(interval, int)', 'execute')"
    ).fetchone() == (False, True)
