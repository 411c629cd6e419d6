"""The `pgnotify_daemon` role (`pgnotify.grant_daemon_privileges`) holds what `pgnotify run`
needs, and nothing more.

Each statement runs as a LOGIN role granted only `pgnotify_daemon`, over asyncpg as the
daemon runs it: the maintenance and failure paths the main-path test
(tests/daemon/test_least_privilege.py) does not reach, and what the role must be refused.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgnotify import queries
from tests.factories import claim, daemon_connection, lone_notification, record

Conn = psycopg.Connection[Any]
LOGIN = "pgnotify_test_role_rights"


@pytest.fixture
def role_dsn(db: Conn, clean_db: str) -> str:
    """A DSN for a LOGIN role whose only rights come from `pgnotify_daemon`."""
    db.execute(
        f"""
        do $$ begin
            if not exists (select 1 from pg_roles where rolname = '{LOGIN}') then
                create role {LOGIN} login;
            end if;
        end $$;
        """
    )
    db.execute(f"grant pgnotify_daemon to {LOGIN}")
    params = conninfo_to_dict(clean_db)
    params["user"] = LOGIN
    return make_conninfo("", **params)  # type: ignore[arg-type]


def test_the_login_role_is_only_a_pgnotify_daemon(db: Conn, role_dsn: str) -> None:
    """The tests below prove the role's rights only if it has no others."""
    roles = db.execute(
        "select r.rolname from pg_roles r where pg_has_role(%s, r.oid, 'member')"
        " order by r.rolname",
        (LOGIN,),
    ).fetchall()
    assert roles == [("pgnotify_daemon",), (LOGIN,)]
    assert db.execute(
        "select rolsuper, rolcreaterole, rolcreatedb, rolbypassrls from pg_roles"
        " where rolname = %s",
        (LOGIN,),
    ).fetchone() == (False, False, False, False)


async def test_the_daemon_role_records_an_sms_opt_out(db: Conn, role_dsn: str) -> None:
    """Twilio's 21610 (the recipient replied STOP): the outcome and the opt-out are written
    together, as the worker writes them."""
    nid = lone_notification(db, channel="sms")
    async with daemon_connection(role_dsn) as conn:
        assert [r["id"] for r in await claim(conn, "role-daemon")] == [nid]
        reason = "21610: recipient unsubscribed (STOP)"
        async with conn.transaction():
            assert await record(conn, "role-daemon", [nid], "failed", last_error=reason) == [nid]
            await conn.execute(queries.RECORD_OPT_OUT, nid, "sms", reason)
    assert db.execute("select channel, reason from pgnotify.opt_outs").fetchall() == [
        ("sms", reason)
    ]
    assert db.execute(
        "select status from pgnotify.notifications where id = %s", (nid,)
    ).fetchone() == ("failed",)


async def test_the_daemon_role_rescues_expired_leases(db: Conn, role_dsn: str) -> None:
    nid = lone_notification(db)
    async with daemon_connection(role_dsn) as conn:
        assert [r["id"] for r in await claim(conn, "crashed-daemon", lease=0.05)] == [nid]
        await asyncio.sleep(0.3)
        rows = await conn.fetch(queries.RESCUE_EXPIRED_LEASES, 3, [])
    assert [r["id"] for r in rows] == [nid]
    assert db.execute(
        "select status from pgnotify.notifications where id = %s", (nid,)
    ).fetchone() == ("pending",)


async def test_the_daemon_role_releases_its_rows_at_shutdown(db: Conn, role_dsn: str) -> None:
    nid = lone_notification(db)
    async with daemon_connection(role_dsn) as conn:
        assert [r["id"] for r in await claim(conn, "stopping-daemon")] == [nid]
        rows = await conn.fetch(queries.RELEASE_CLAIMED, "stopping-daemon", [])
    assert [r["id"] for r in rows] == [nid]
    assert db.execute(
        "select status, attempts from pgnotify.notifications where id = %s", (nid,)
    ).fetchone() == ("pending", 0)


async def test_the_daemon_role_purges_finished_rows(db: Conn, role_dsn: str) -> None:
    old = lone_notification(db)
    db.execute(
        "update pgnotify.notifications set status = 'sent',"
        " updated_at = now() - interval '400 days' where id = %s",
        (old,),
    )
    async with daemon_connection(role_dsn) as conn:
        assert await conn.fetchval(queries.PURGE_FINISHED, 90, 5000) == 1
    assert db.execute("select count(*) from pgnotify.notifications").fetchone() == (0,)


@pytest.mark.parametrize(
    "statement",
    [
        # The booking model is the application's: read only.
        "update booking.bookings set status = 'cancelled'",
        "insert into booking.shops (id, name, timezone) values (gen_random_uuid(), 'x', 'UTC')",
        "delete from booking.customers",
        "delete from booking.payments",
        # The queue is written by the triggers: the daemon never adds rows to it.
        "insert into pgnotify.notifications (kind, channel, booking_id, occurrence)"
        " values ('booking_confirmed', 'email', gen_random_uuid(), 'x')",
        "truncate pgnotify.notifications",
        # Routing, reminder rules and migrations are the operator's.
        "update pgnotify.routes set enabled = false",
        "delete from pgnotify.reminder_rules",
        "insert into pgnotify.schema_migrations (version, name, checksum) values ('999', 'x', 'x')",
        # Inbox messages and opt-outs are added, never changed or taken back.
        "update pgnotify.inbox set read_at = now()",
        "delete from pgnotify.inbox",
        "delete from pgnotify.opt_outs",
        # No DDL.
        "drop table pgnotify.notifications",
        "drop function pgnotify.purge(interval, int)",
        "create table pgnotify.mine (id int)",
        "create table booking.mine (id int)",
        "alter table pgnotify.notifications disable trigger all",
    ],
)
def test_the_daemon_role_is_refused_what_it_does_not_need(role_dsn: str, statement: str) -> None:
    with (
        psycopg.connect(role_dsn, autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute(statement)
