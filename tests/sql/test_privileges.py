"""Trust boundaries between the application and the queue (CONTRACT.md §5; sql/001_baseline.sql).

An application role holds rights on its own `booking` tables and nothing in `pgnotify`, yet
every notification follows its writes: the functions that write the queue run as their
owner. Neither that role nor one also granted `pgnotify_client` can forge, mark, redirect or
read queue rows; `pgnotify_client` reads the inbox, sets `read_at` and calls
`notify_booking`, nothing else. Each statement runs over its own LOGIN connection.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.factories import make_booking, make_payment, make_world

Conn = psycopg.Connection[Any]

APP = "pgnotify_test_app"  # rights on booking.* only
APP_CLIENT = "pgnotify_test_app_client"  # the same, and pgnotify_client

# The functions of sql/001 that write the queue, and who besides their owner may call them.
KNOWN_WRITERS: dict[str, set[str]] = {
    "enqueue": set(),
    "on_bookings_inserted": set(),
    "on_bookings_updated": set(),
    "on_payments_changed": set(),
    "notify_booking": {"pgnotify_client"},
    "retry": {"pgnotify_daemon"},
    "purge": {"pgnotify_daemon"},
}
PINNED = "search_path=pg_catalog, pg_temp"


def login_role(db: Conn, dsn: str, name: str, *member_of: str) -> str:
    """A LOGIN role with full rights on the booking model, member of ``member_of`` only;
    returns its DSN."""
    db.execute(
        f"""
        do $$ begin
            if not exists (select 1 from pg_roles where rolname = '{name}') then
                create role {name} login;
            end if;
        end $$;
        """
    )
    db.execute(f"grant usage on schema booking to {name}")
    db.execute(f"grant select, insert, update, delete on all tables in schema booking to {name}")
    for role in member_of:
        db.execute(f"grant {role} to {name}")
    params = conninfo_to_dict(dsn)
    params["user"] = name
    return make_conninfo("", **params)  # type: ignore[arg-type]


@pytest.fixture
def app_dsn(db: Conn, clean_db: str) -> str:
    return login_role(db, clean_db, APP)


@pytest.fixture
def client_dsn(db: Conn, clean_db: str) -> str:
    return login_role(db, clean_db, APP_CLIENT, "pgnotify_client")


def queue(db: Conn, booking: UUID) -> list[tuple[str, str, str]]:
    """The (kind, channel, status) of a booking's queue rows, read as the owner, sorted."""
    return sorted(
        db.execute(
            "select kind, channel, status from pgnotify.notifications where booking_id = %s",
            (booking,),
        ).fetchall()
    )


def rows(
    kinds: list[str], status: str, channels: tuple[str, ...] = ("email", "inapp", "sms")
) -> list[tuple[str, str, str]]:
    return [(kind, channel, status) for kind in kinds for channel in channels]


# -- The application's role: its own tables only ---------------------------------------------


def test_the_application_role_holds_rights_on_booking_tables_only(db: Conn, app_dsn: str) -> None:
    """The lifecycle test below proves something only if the role has no pgnotify rights."""
    assert db.execute(
        "select array_agg(r.rolname order by r.rolname) from pg_roles r"
        " where pg_has_role(%s, r.oid, 'member')",
        (APP,),
    ).fetchone() == ([APP],)
    assert db.execute(
        "select has_schema_privilege(%s, 'pgnotify', 'usage'), rolsuper, rolbypassrls"
        " from pg_roles where rolname = %s",
        (APP, APP),
    ).fetchone() == (False, False, False)


def test_an_application_with_rights_on_its_tables_only_causes_every_notification(
    db: Conn, app_dsn: str
) -> None:
    """Confirm, pay, fail a payment, reschedule, cancel, confirm a pending booking: written
    by a role with no right in pgnotify, each change queues what tests/sql/test_lifecycle.py
    and tests/sql/test_shop_alerts.py expect of it, the shop's alerts included (the trigger
    functions run as their owner)."""
    with psycopg.connect(app_dsn, autocommit=True) as app:
        world = make_world(app, shop_alerts=True)
        booking = make_booking(app, world, starts_in=timedelta(days=3))
        reminders = [
            ("reminder_24h", "email", "pending"),
            ("reminder_24h", "sms", "pending"),
            ("reminder_2h", "sms", "pending"),
            ("shop_booking_confirmed", "email", "pending"),
        ]
        assert queue(db, booking) == sorted(rows(["booking_confirmed"], "pending") + reminders)

        payment = make_payment(app, booking, status="pending")
        app.execute("update booking.payments set status = 'succeeded' where id = %s", (payment,))
        make_payment(app, booking, status="failed")
        app.execute(
            "update booking.bookings set starts_at = starts_at + interval '1 day' where id = %s",
            (booking,),
        )
        events = ["booking_confirmed", "payment_confirmed", "payment_failed", "booking_rescheduled"]
        alerts = [*reminders, ("shop_payment_failed", "email", "pending")]
        assert queue(db, booking) == sorted(rows(events, "pending") + alerts)
        moved = db.execute(
            "select count(*) from pgnotify.notifications n join booking.bookings b"
            " on b.id = n.booking_id where n.booking_id = %s and n.kind like 'reminder%%'"
            " and n.run_at = b.starts_at - case n.kind when 'reminder_24h'"
            " then interval '24 hours' else interval '2 hours' end",
            (booking,),
        ).fetchone()
        assert moved == (3,), "the reminders moved with the booking"

        app.execute("update booking.bookings set status = 'cancelled' where id = %s", (booking,))
        assert queue(db, booking) == sorted(
            rows([*events, "booking_cancelled"], "pending")
            + [(kind, channel, "cancelled") for kind, channel, _ in reminders[:3]]
            + [("shop_booking_cancelled", "email", "pending")]
            + alerts[3:]
        )

        later = make_booking(app, world, status="pending")
        app.execute("update booking.bookings set status = 'confirmed' where id = %s", (later,))
        assert queue(db, later) == sorted(rows(["booking_confirmed"], "pending") + reminders)


REFUSED_TO_BOTH = [
    # Reading the queue would show every customer's contacts.
    "select * from pgnotify.notifications",
    "select * from pgnotify.dead_letters",
    # Forge, mark sent, redirect, drop.
    "insert into pgnotify.notifications (kind, channel, booking_id, recipient, occurrence)"
    " values ('booking_confirmed', 'email', gen_random_uuid(), 'x@evil.example', 'forged')",
    "update pgnotify.notifications set status = 'sent', sent_at = now()",
    "update pgnotify.notifications set recipient = 'x@evil.example'",
    "update pgnotify.notifications set run_at = 'infinity'",
    "delete from pgnotify.notifications",
    "truncate pgnotify.notifications",
    # The functions that write the queue, but through notify_booking.
    "select pgnotify.enqueue(array[row(gen_random_uuid(), null, 'booking_confirmed', 'x',"
    " now())::pgnotify.event], array['email'], true)",
    "select pgnotify.retry(1)",
    "select pgnotify.purge(interval '0 days')",
    "select pgnotify.grant_daemon_privileges()",
    # Routing, reminder rules, the catalog and opt-outs are the operator's and the daemon's.
    "update pgnotify.routes set enabled = false",
    "insert into pgnotify.routes (kind, channel) values ('payment_failed', 'email')",
    "update pgnotify.reminder_rules set before_start = interval '1 minute'",
    "insert into pgnotify.kinds (kind, description) values ('spam', 'x')",
    "select * from pgnotify.opt_outs",
    "insert into pgnotify.opt_outs (customer_id, channel) values (gen_random_uuid(), 'sms')",
    "delete from pgnotify.opt_outs",
    # Inbox messages are the daemon's to write.
    "insert into pgnotify.inbox (user_id, kind, title, body)"
    " values (gen_random_uuid(), 'booking_confirmed', 'forged', 'forged')",
    "delete from pgnotify.inbox",
    # No DDL, and no switching the lifecycle off.
    "create table pgnotify.mine (id int)",
    "alter table pgnotify.notifications disable trigger all",
    "alter table booking.bookings disable trigger bookings_lifecycle_insert",
    "drop trigger payments_lifecycle_update on booking.payments",
]

REFUSED_TO_THE_APPLICATION = [
    # Without pgnotify_client: no inbox, no manual notifications.
    "select * from pgnotify.inbox",
    "update pgnotify.inbox set read_at = now()",
    "select pgnotify.notify_booking(gen_random_uuid(), 'booking_confirmed')",
]


@pytest.mark.parametrize("statement", REFUSED_TO_BOTH + REFUSED_TO_THE_APPLICATION)
def test_the_application_role_is_refused_everything_in_pgnotify(
    app_dsn: str, statement: str
) -> None:
    with (
        psycopg.connect(app_dsn, autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute(statement)


# -- pgnotify_client: the inbox and notify_booking -------------------------------------------


REFUSED_TO_THE_CLIENT = [
    # read_at is the only column it may set.
    "update pgnotify.inbox set title = 'changed'",
    "update pgnotify.inbox set body = 'changed'",
    "update pgnotify.inbox set data = '{}'",
    "update pgnotify.inbox set user_id = gen_random_uuid()",
    "update pgnotify.inbox set kind = 'payment_failed'",
    "update pgnotify.inbox set read_at = now(), title = 'changed'",
    "truncate pgnotify.inbox",
    "select pgnotify.grant_client_privileges()",
]


@pytest.mark.parametrize("statement", REFUSED_TO_BOTH + REFUSED_TO_THE_CLIENT)
def test_an_application_granted_pgnotify_client_is_refused_the_queue(
    client_dsn: str, statement: str
) -> None:
    with (
        psycopg.connect(client_dsn, autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute(statement)


def test_pgnotify_client_reads_the_inbox_and_marks_messages_read(db: Conn, client_dsn: str) -> None:
    user = uuid4()
    (message,) = db.execute(
        "insert into pgnotify.inbox (user_id, kind, title, body)"
        " values (%s, 'booking_confirmed', 'Booked', 'See you') returning id",
        (user,),
    ).fetchone() or (None,)
    with psycopg.connect(client_dsn, autocommit=True) as app:
        assert app.execute(
            "select id, title, read_at from pgnotify.inbox where user_id = %s", (user,)
        ).fetchall() == [(message, "Booked", None)]
        marked = app.execute(
            "update pgnotify.inbox set read_at = now() where user_id = %s and id = %s",
            (user, message),
        )
        assert marked.rowcount == 1
    assert db.execute(
        "select read_at is not null, title, body from pgnotify.inbox where id = %s", (message,)
    ).fetchone() == (True, "Booked", "See you")


def test_pgnotify_client_queues_a_notification_by_hand(db: Conn, client_dsn: str) -> None:
    """notify_booking runs as its owner: the rows are queued for the client's booking."""
    with psycopg.connect(client_dsn, autocommit=True) as app:
        booking = make_booking(app, make_world(app, shop_alerts=True), status="pending")
        (ids,) = app.execute(
            "select pgnotify.notify_booking(%s, 'booking_confirmed', array['email', 'inapp'])",
            (booking,),
        ).fetchone() or (None,)
    assert len(ids) == 2
    assert queue(db, booking) == [
        ("booking_confirmed", "email", "pending"),
        ("booking_confirmed", "inapp", "pending"),
    ]


def test_granting_pgnotify_client_grants_no_write_on_the_queue(db: Conn, clean_db: str) -> None:
    """Read from the catalog: every privilege `pgnotify_client` holds on pgnotify's tables,
    views and sequences, column by column, is SELECT on the inbox and UPDATE of its
    `read_at`, and INSERT of a reply's fields into `inbound_messages` (never `action` or
    `handled_at`: the trigger records those); of the functions that write the queue it may
    call `notify_booking` only."""
    held = db.execute(
        """
        select c.relname, p.priv, a.attname
        from pg_class c
        join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
        cross join unnest(array['SELECT', 'INSERT', 'UPDATE', 'REFERENCES']) p (priv)
        where c.relnamespace = 'pgnotify'::regnamespace and c.relkind in ('r', 'v', 'm', 'p')
          and has_column_privilege('pgnotify_client', c.oid, a.attnum, p.priv)
        union all
        select c.relname, p.priv, null
        from pg_class c
        cross join unnest(array['DELETE', 'TRUNCATE', 'TRIGGER']) p (priv)
        where c.relnamespace = 'pgnotify'::regnamespace and c.relkind in ('r', 'v', 'm', 'p')
          and has_table_privilege('pgnotify_client', c.oid, p.priv)
        union all
        select c.relname, p.priv, null
        from pg_class c
        cross join unnest(array['USAGE', 'UPDATE']) p (priv)
        where c.relnamespace = 'pgnotify'::regnamespace and c.relkind = 'S'
          and has_sequence_privilege('pgnotify_client', c.oid, p.priv)
        """
    ).fetchall()
    inbox_columns = {
        r[0]
        for r in db.execute(
            "select attname from pg_attribute where attrelid = 'pgnotify.inbox'::regclass"
            " and attnum > 0 and not attisdropped"
        )
    }
    assert {(rel, priv) for rel, priv, _ in held} == {
        ("inbox", "SELECT"),
        ("inbox", "UPDATE"),
        ("inbound_messages", "INSERT"),
    }
    assert {col for _, priv, col in held if priv == "SELECT"} == inbox_columns
    assert [col for _, priv, col in held if priv == "UPDATE"] == ["read_at"]
    assert sorted(col for rel, priv, col in held if priv == "INSERT") == [
        "body",
        "channel",
        "from_address",
        "provider_id",
        "received_at",
        "to_address",
    ]
    callable_writers = [
        name
        for signature, name, *_ in queue_writers(db)
        if db.execute(
            "select has_function_privilege('pgnotify_client', %s::regprocedure, 'execute')",
            (signature,),
        ).fetchone()
        == (True,)
    ]
    assert callable_writers == ["notify_booking"]


# -- Every function that writes the queue ----------------------------------------------------

_WRITES = re.compile(
    r"\b(?:insert\s+into|update|delete\s+from|truncate(?:\s+table)?|merge\s+into)"
    r"\s+(?:only\s+)?pgnotify\.",
    re.IGNORECASE,
)


def queue_writers(db: Conn) -> list[tuple[str, str, bool, list[str], list[str]]]:
    """Every function of schemas pgnotify and booking that writes a pgnotify table, directly
    or by calling one that does: (signature, name, SECURITY DEFINER, settings, grantees of
    EXECUTE other than the owner, `PUBLIC` for the public pseudo-role)."""
    functions = db.execute(
        """
        select p.oid::regprocedure::text, p.proname, p.prosrc, p.prosecdef,
               coalesce(p.proconfig, '{}'),
               array(select case when a.grantee = 0 then 'PUBLIC' else a.grantee::regrole::text end
                     from aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
                     where a.privilege_type = 'EXECUTE' and a.grantee <> p.proowner
                     order by 1)
        from pg_proc p
        where p.pronamespace in ('pgnotify'::regnamespace, 'booking'::regnamespace)
        """
    ).fetchall()
    writers = {sig for sig, _, src, *_ in functions if _WRITES.search(src)}
    while True:
        names = {sig.split("(")[0] for sig in writers}
        callers = {
            sig
            for sig, _, src, *_ in functions
            if any(re.search(rf"\b{re.escape(n)}\s*\(", src, re.IGNORECASE) for n in names)
        }
        if callers <= writers:
            break
        writers |= callers
    return [
        (sig, name, definer, list(config), list(grantees))
        for sig, name, _, definer, config, grantees in functions
        if sig in writers
    ]


def test_every_function_that_writes_the_queue_runs_as_its_owner_with_a_pinned_path(
    db: Conn, clean_db: str
) -> None:
    """Found by their bodies (an INSERT, UPDATE, DELETE, TRUNCATE or MERGE on a pgnotify
    table, or a call of such a function), so a function a later migration adds is held to
    it too: SECURITY DEFINER, `search_path` pinned to pg_catalog, pg_temp, and EXECUTE
    granted to nobody but the roles that need it (never PUBLIC)."""
    writers = queue_writers(db)
    assert {name for _, name, *_ in writers} >= set(KNOWN_WRITERS), "the scan finds them all"
    problems = []
    for sig, name, definer, config, grantees in writers:
        if not definer:
            problems.append(f"{sig} is not SECURITY DEFINER")
        if PINNED not in config:
            problems.append(f"{sig} does not pin {PINNED} (has {config})")
        allowed = KNOWN_WRITERS.get(name, {"pgnotify_daemon"})
        if not set(grantees) <= allowed:
            problems.append(f"{sig} is executable by {grantees}, not only by {sorted(allowed)}")
    assert problems == []
    for name, grantees in KNOWN_WRITERS.items():
        assert [g for _, n, _, _, g in writers if n == name] == [sorted(grantees)], name


# -- notify_booking refuses what it cannot queue ---------------------------------------------


def test_notify_booking_refuses_a_payment_kind_for_a_booking_without_payment(db: Conn) -> None:
    """It used to queue the rows with no payment, for the template to render without one."""
    booking = make_booking(db, make_world(db), status="pending")
    with pytest.raises(psycopg.errors.NoDataFound, match=f"booking {booking} has no payment"):
        db.execute("select pgnotify.notify_booking(%s, 'payment_failed')", (booking,))
    assert queue(db, booking) == []
    payment = make_payment(db, booking, status="failed")
    (ids,) = db.execute(
        "select pgnotify.notify_booking(%s, 'payment_failed', array['sms'])", (booking,)
    ).fetchone() or (None,)
    assert db.execute(
        "select payment_id from pgnotify.notifications where id = any (%s)", (ids,)
    ).fetchall() == [(payment,)]


def test_notify_booking_refuses_an_empty_channel_list(db: Conn) -> None:
    """`'{}'` used to pass the channel check and queue nothing, silently."""
    booking = make_booking(db, make_world(db), status="pending")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="no channel given"):
        db.execute("select pgnotify.notify_booking(%s, 'booking_confirmed', '{}')", (booking,))
    assert queue(db, booking) == []
