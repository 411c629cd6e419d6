"""The daemon's main path works as a login role granted only `pgnotify_daemon`, for
bookings an application role with rights on its own tables only writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.daemon.harness import count_reaches, make_settings, running
from tests.factories import make_booking, make_payment, make_world

Conn = psycopg.Connection[Any]
LOGIN = "pgnotify_test_daemon_login"
APP = "pgnotify_test_booking_app"  # rights on booking.* only


@pytest.fixture
def daemon_dsn(db: Conn, clean_db: str) -> str:
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


async def test_the_daemon_runs_with_only_the_pgnotify_daemon_role(
    db: Conn, clean_db: str, daemon_dsn: str, tmp_path: Path
) -> None:
    world = make_world(db, email=None)  # one skipped channel too
    booking = make_booking(db, world)
    with psycopg.connect(daemon_dsn) as conn:
        (superuser,) = conn.execute(
            "select rolsuper from pg_roles where rolname = current_user"
        ).fetchone() or (None,)
        assert superuser is False
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("update booking.bookings set status = 'cancelled'")
    async with running(make_settings(daemon_dsn, tmp_path)):
        await count_reaches(
            clean_db,
            2,
            f"booking_id = '{booking}' and status = 'sent' and kind = 'booking_confirmed'",
        )
    assert db.execute("select count(*) from pgnotify.inbox").fetchone() == (1,)
    assert (tmp_path / "sms.jsonl").is_file()


@pytest.fixture
def app_dsn(db: Conn, clean_db: str) -> str:
    """A LOGIN role with rights on the booking model and nothing in pgnotify."""
    db.execute(
        f"""
        do $$ begin
            if not exists (select 1 from pg_roles where rolname = '{APP}') then
                create role {APP} login;
            end if;
        end $$;
        """
    )
    db.execute(f"grant usage on schema booking to {APP}")
    db.execute(f"grant select, insert, update, delete on all tables in schema booking to {APP}")
    params = conninfo_to_dict(clean_db)
    params["user"] = APP
    return make_conninfo("", **params)  # type: ignore[arg-type]


async def test_a_booking_written_by_a_least_privilege_application_is_delivered(
    db: Conn, clean_db: str, daemon_dsn: str, app_dsn: str, tmp_path: Path
) -> None:
    """Both sides least privileged: the application's role (booking tables only) books and
    pays, the daemon's role (pgnotify_daemon only) delivers every channel of both and the
    shop's alert."""
    with psycopg.connect(app_dsn, autocommit=True) as app:
        assert app.execute("select has_schema_privilege('pgnotify', 'usage')").fetchone() == (
            False,
        )
        booking = make_booking(app, make_world(app, shop_alerts=True))
        make_payment(app, booking)
    async with running(make_settings(daemon_dsn, tmp_path)):
        await count_reaches(
            clean_db,
            7,
            f"booking_id = '{booking}' and status = 'sent'"
            " and kind in ('booking_confirmed', 'payment_confirmed', 'shop_booking_confirmed')",
        )
    assert db.execute("select count(*) from pgnotify.inbox").fetchone() == (2,)
