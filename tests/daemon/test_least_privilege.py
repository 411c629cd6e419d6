"""The daemon's main path works as a login role granted only `pgnotify_daemon`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.daemon.harness import count_reaches, make_settings, running
from tests.factories import make_booking, make_world

Conn = psycopg.Connection[Any]
LOGIN = "pgnotify_test_daemon_login"


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
