"""The `pgnotify_daemon` role (`pgnotify.grant_daemon_privileges`) holds what `pgnotify run`
needs, and nothing more.

Each statement runs as a LOGIN role granted only `pgnotify_daemon`, over asyncpg as the
daemon runs it: the maintenance and failure paths the main-path test
(tests/daemon/test_least_privilege.py) does not reach, and what the role must be refused.
The last tests read the role's grants from the catalog and hold them against every
statement of pgnotify/queries.py: what they need, and no column more.
"""

from __future__ import annotations

import asyncio
import re
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
        "select pgnotify.enqueue(array[row(gen_random_uuid(), null, 'booking_confirmed', 'x',"
        " now())::pgnotify.event], array['email'], true)",
        "select pgnotify.notify_booking(gen_random_uuid(), 'booking_confirmed')",
        # What a row is about is the triggers' to say (column-level UPDATE).
        "update pgnotify.notifications set kind = 'payment_failed'",
        "update pgnotify.notifications set channel = 'sms'",
        "update pgnotify.notifications set booking_id = gen_random_uuid()",
        "update pgnotify.notifications set payment_id = gen_random_uuid()",
        "update pgnotify.notifications set shop_id = gen_random_uuid()",
        "update pgnotify.notifications set occurrence = 'x'",
        "update pgnotify.notifications set created_at = now()",
        # Rows go through pgnotify.purge, which keeps dead letters.
        "delete from pgnotify.notifications",
        "delete from pgnotify.notifications where status = 'failed'",
        # Routing, reminder rules and migrations are the operator's.
        "update pgnotify.routes set enabled = false",
        "delete from pgnotify.reminder_rules",
        "insert into pgnotify.schema_migrations (version, name, checksum) values ('999', 'x', 'x')",
        "select pgnotify.grant_daemon_privileges()",
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


def test_the_daemon_role_retries_dead_letters_as_pgnotify_retry_does(
    db: Conn, role_dsn: str
) -> None:
    """`pgnotify retry --all-failed`, run with the daemon's credentials: the row goes back
    through `pgnotify.retry` (which runs as its owner), not through an UPDATE of the role."""
    nid = lone_notification(db)
    db.execute("update pgnotify.notifications set status = 'failed' where id = %s", (nid,))
    with psycopg.connect(role_dsn, autocommit=True) as conn:
        assert conn.execute(queries.RETRY_ALL_FAILED, {"kind": None}).fetchall() == [(nid, True)]
    assert db.execute(
        "select status, attempts from pgnotify.notifications where id = %s", (nid,)
    ).fetchone() == ("pending", 0)


# -- The role against the statements of pgnotify/queries.py ----------------------------------


def _statements() -> dict[str, str]:
    """Every statement of pgnotify/queries.py, by name, comments and literals blanked."""
    return {
        name: re.sub(r"'(?:[^']|'')*'", "''", re.sub(r"--[^\n]*", "", value))
        for name, value in vars(queries).items()
        if name.isupper() and not name.startswith("_") and isinstance(value, str)
    }


def _assigned_columns(sql: str, table: str) -> set[str]:
    """The columns the SET clauses of ``update <table>`` in ``sql`` assign."""
    columns: set[str] = set()
    head = re.compile(rf"\bupdate\s+{re.escape(table)}\b(?:\s+(?:as\s+)?(?!set\b)\w+)?\s+set\b")
    end = re.compile(r"(?<!\w)(?:from|where|returning)\b")
    for match in head.finditer(sql):
        depth, start, i = 0, match.end(), match.end()
        items = []
        while i < len(sql):
            ch = sql[i]
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
                if depth < 0:  # the end of the CTE holding the UPDATE
                    break
            elif depth == 0 and ch == ",":
                items.append(sql[start:i])
                start = i + 1
            elif depth == 0 and end.match(sql, i):
                break
            i += 1
        items.append(sql[start:i])
        for item in items:
            assignment = re.match(r"\s*(\w+)\s*=", item)
            assert assignment, f"cannot read the assignment {item!r}"
            columns.add(assignment.group(1))
    return columns


def test_the_daemon_role_updates_exactly_the_queue_columns_its_statements_set(
    db: Conn, clean_db: str
) -> None:
    """Column-level UPDATE, read from the catalog, equals the columns that the SET clauses
    of pgnotify/queries.py assign: a statement that sets another column fails here rather
    than in production, and a grant no statement needs is taken back."""
    statements = _statements()
    assigned = set().union(
        *(_assigned_columns(sql, "pgnotify.notifications") for sql in statements.values())
    )
    assert {"status", "lease_until", "claimed_by"} <= assigned, "the parser reads the claim"
    granted = {
        r[0]
        for r in db.execute(
            "select attname from pg_attribute where attrelid = 'pgnotify.notifications'::regclass"
            " and attnum > 0 and not attisdropped"
            " and has_column_privilege('pgnotify_daemon', attrelid, attnum, 'UPDATE')"
        )
    }
    assert granted == assigned
    for table in ("pgnotify.inbox", "pgnotify.opt_outs"):
        assert not any(_assigned_columns(sql, table) for sql in statements.values())


def test_the_daemon_role_holds_what_every_statement_of_queries_needs(
    db: Conn, clean_db: str
) -> None:
    """Each table a statement of pgnotify/queries.py reads, inserts into or deletes from,
    and each pgnotify function it calls, is granted to `pgnotify_daemon` (the CLI's
    statements included: `pgnotify status`, `retry` and `render` run with its credentials)."""
    functions = {
        r[0]
        for r in db.execute(
            "select proname from pg_proc where pronamespace = 'pgnotify'::regnamespace"
        )
    }
    missing = []
    for name, sql in _statements().items():
        for kind, obj in re.findall(
            r"\b(from|join|into|delete\s+from|update)\s+pgnotify\.(\w+)", sql, re.IGNORECASE
        ):
            if obj in functions:
                continue
            privilege = {"into": "INSERT", "delete from": "DELETE", "update": "UPDATE"}.get(
                " ".join(kind.lower().split()), "SELECT"
            )
            if privilege == "UPDATE":
                continue  # column by column: the test above
            held = db.execute(
                "select has_table_privilege('pgnotify_daemon', %s, %s)",
                (f"pgnotify.{obj}", privilege),
            ).fetchone()
            if held != (True,):
                missing.append(f"{name}: {privilege} on pgnotify.{obj}")
        for fn in set(re.findall(r"\bpgnotify\.(\w+)\s*\(", sql)) & functions:
            held = db.execute(
                "select bool_and(has_function_privilege('pgnotify_daemon', oid, 'EXECUTE'))"
                " from pg_proc where pronamespace = 'pgnotify'::regnamespace and proname = %s",
                (fn,),
            ).fetchone()
            if held != (True,):
                missing.append(f"{name}: EXECUTE on pgnotify.{fn}")
    assert missing == []
