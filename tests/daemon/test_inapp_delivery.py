"""In-app delivery through a real daemon: one write per row, in one transaction, never
`sending` (issue 15); and a message is stored whatever a template rendered, so one row's
text never fails the inbox write of its batch.

The fault suite's history trigger records every update of the queue, so a test sees each
write the daemon made, not only where the rows ended.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest

from tests.daemon.harness import count_reaches, make_settings, running, wait_until
from tests.factories import make_booking, make_world
from tests.faults.history import History

Conn = psycopg.Connection[Any]


def inapp_row(db: Conn, booking: UUID) -> tuple[int, str, str | None]:
    row = db.execute(
        "select id, status, last_error from pgnotify.notifications"
        " where booking_id = %s and channel = 'inapp'",
        (booking,),
    ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


async def test_a_nul_byte_from_a_template_never_stops_the_inbox_write(
    db: Conn, clean_db: str, tmp_path: Path
) -> None:
    """A shop's in-app template that renders a NUL byte (which Postgres text cannot hold)
    gets its message stored with a replacement character; it fails no other row's write."""
    root = tmp_path / "templates"
    odd = make_world(db, shop_name="Odd", email=None, phone=None)
    body = root / "shops" / str(odd.shop_id) / "en" / "booking_confirmed" / "inapp_body.txt"
    body.parent.mkdir(parents=True)
    body.write_text('before{{ "\\x00" }}after')
    others = [make_world(db, shop_name=f"Shop {i}", email=None, phone=None) for i in range(2)]
    bookings = [make_booking(db, odd), *(make_booking(db, w) for w in others)]

    settings = make_settings(clean_db, tmp_path / "outbox", NOTIFICATION_TEMPLATES_DIR=root)
    async with running(settings):
        await count_reaches(clean_db, 3, "channel = 'inapp' and status = 'sent'")
    assert [inapp_row(db, b)[1] for b in bookings] == ["sent"] * 3
    stored = db.execute(
        "select body from pgnotify.inbox where notification_id = %s",
        (inapp_row(db, bookings[0])[0],),
    ).fetchone()
    assert stored == ("before\ufffdafter",)


async def test_inapp_rows_are_written_once_and_a_failing_render_fails_alone(
    db: Conn, clean_db: str, tmp_path: Path
) -> None:
    """Each in-app row is updated exactly once, from `pending` to where it ends, and never
    passes through `sending`; a shop whose in-app template does not compile fails its own
    row with the error, a customer who lost their user since the row was queued is skipped
    with the reason, and every other row is sent with its inbox message."""
    root = tmp_path / "templates"
    good = [make_world(db, shop_name=f"Shop {i}", email=None, phone=None) for i in range(3)]
    broken = make_world(db, shop_name="Broken", email=None, phone=None)
    title = root / "shops" / str(broken.shop_id) / "en" / "booking_confirmed" / "inapp_title.txt"
    title.parent.mkdir(parents=True)
    title.write_text("{% if %}")
    gone = make_world(db, shop_name="Gone", email=None, phone=None)
    sent = [make_booking(db, world) for world in good for _ in range(4)]
    failing = make_booking(db, broken)
    skipped = make_booking(db, gone)
    db.execute("update booking.customers set user_id = null where id = %s", (gone.customer_id,))

    settings = make_settings(
        clean_db, tmp_path / "outbox", NOTIFICATION_TEMPLATES_DIR=root, NOTIFICATION_BATCH_SIZE=5
    )
    with History.recording(clean_db) as history:
        async with running(settings):
            await count_reaches(
                clean_db, len(sent) + 2, "channel = 'inapp' and status <> 'pending'"
            )
        ids = [inapp_row(db, b)[0] for b in sent]
        nid, status, error = inapp_row(db, failing)
        assert status == "failed" and "syntax error" in str(error) and str(title) in str(error)
        sid, status, reason = inapp_row(db, skipped)
        assert status == "skipped" and reason
        writes = history.statuses([*ids, nid, sid])

    assert writes == {**{i: ["sent"] for i in ids}, nid: ["failed"], sid: ["skipped"]}
    inbox = db.execute("select notification_id from pgnotify.inbox").fetchall()
    assert sorted(i for (i,) in inbox) == sorted(ids)


# Two ways an inbox write fails on one row, whatever the others hold: a message already in
# the inbox for it (the unique key, 23505), and an application's own trigger on the inbox
# that refuses it (P0001).
ALREADY_THERE = """
insert into pgnotify.inbox (user_id, notification_id, kind, title, body)
values (gen_random_uuid(), %(id)s, 'booking_confirmed', 'there', 'already')
"""
REFUSED = """
create function public.refuse_one() returns trigger language plpgsql as $$
begin
    if new.notification_id = %(id)s then raise exception 'refused by the application'; end if;
    return new;
end $$;
create trigger refuse_one before insert on pgnotify.inbox
    for each row execute function public.refuse_one();
"""


@pytest.mark.parametrize(
    ("setup", "error"),
    [(ALREADY_THERE, "duplicate key"), (REFUSED, "refused by the application")],
    ids=["unique-key", "application-trigger"],
)
async def test_an_inbox_write_that_fails_on_one_row_fails_that_row_alone(
    db: Conn, clean_db: str, tmp_path: Path, setup: str, error: str
) -> None:
    """The batch's one write fails on one row; the batch is written again row by row,
    that row gets a failed attempt with the error and a retry, every other row is sent,
    and email goes out meanwhile."""
    worlds = [make_world(db, shop_name=f"Shop {i}", phone=None) for i in range(3)]
    bookings = [make_booking(db, w) for w in worlds]
    guilty, _, _ = inapp_row(db, bookings[0])
    db.execute(setup.replace("%(id)s", str(guilty)))

    settings = make_settings(clean_db, tmp_path / "outbox", NOTIFICATION_RETRY_DELAYS=(60.0,))
    async with running(settings):
        await count_reaches(clean_db, 2, "channel = 'inapp' and status = 'sent'")
        await count_reaches(
            clean_db, 3, "channel = 'email' and kind = 'booking_confirmed' and status = 'sent'"
        )
        await count_reaches(
            clean_db, 1, "channel = 'inapp' and attempts = 1 and status = 'pending'"
        )

    nid, status, last_error = inapp_row(db, bookings[0])
    assert (nid, status) == (guilty, "pending")
    assert last_error is not None and "inbox write failed" in last_error
    assert error in last_error
    assert [inapp_row(db, b)[1] for b in bookings[1:]] == ["sent", "sent"]


async def test_a_connection_lost_while_a_batch_renders_costs_no_attempt(
    db: Conn, clean_db: str, tmp_path: Path
) -> None:
    """The connection of a batch that is rendering a slow shop template is terminated: its
    transaction never commits, so its rows are pending as they were, and the daemon takes
    them again and delivers them, each on its first counted attempt."""
    root = tmp_path / "templates"
    slow = make_world(db, shop_name="Slow", email=None, phone=None)
    body = root / "shops" / str(slow.shop_id) / "en" / "booking_confirmed" / "inapp_body.txt"
    body.parent.mkdir(parents=True)
    body.write_text(
        "{% for i in range(30000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}x"
    )
    bookings = [make_booking(db, slow), make_booking(db, make_world(db, email=None, phone=None))]
    settings = make_settings(
        clean_db,
        tmp_path / "outbox",
        NOTIFICATION_TEMPLATES_DIR=root,
        NOTIFICATION_RENDER_TIMEOUT=30,
        NOTIFICATION_WORKERS=1,
    )
    rendering = (
        "select pid from pg_stat_activity"
        " where application_name = 'pgnotify' and state = 'idle in transaction'"
    )
    async with running(settings):
        pids = await wait_until(lambda: db.execute(rendering).fetchall(), timeout=20)
        for (pid,) in pids:
            db.execute("select pg_terminate_backend(%s)", (pid,))
        await count_reaches(clean_db, 2, "channel = 'inapp' and status = 'sent'", timeout=60)

    rows = db.execute(
        "select attempts, last_error from pgnotify.notifications where channel = 'inapp'"
    ).fetchall()
    assert rows == [(1, None), (1, None)]
    assert len(db.execute("select 1 from pgnotify.inbox").fetchall()) == len(bookings)
