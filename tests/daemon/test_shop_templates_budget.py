"""A shop's templates cannot stop the daemon: they render under a time and memory budget.

Issue 12 reproduced ``{% for i in range(100000) %}{% for j in range(100000) %}`` in a shop's
SMS template freezing every worker, the health socket, the LISTEN probe and the watchdog,
and ``'x' * 3e9``-style expressions allocating gigabytes. Here a real daemon runs with such
a shop (and a shop whose template does not even compile) beside well-behaved ones.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest

from tests.daemon.harness import count, get_health, make_settings, running, wait_until
from tests.factories import make_booking, make_world

Conn = psycopg.Connection[Any]

CPU_BOMB = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}x"
MEMORY_BOMB = "{{ ('x' * 400000000)|length }}"  # 400 MB, over the default 256 MB budget
# Long enough that the other shops are served while the bomb still runs, on a busy box.
RENDER_TIMEOUT = 12.0


def _shop_file(root: Path, shop_id: UUID, relative: str, text: str) -> Path:
    path = root / "shops" / str(shop_id) / "en" / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _confirmations(db: Conn, booking: UUID) -> dict[str, tuple[str, str | None]]:
    rows = db.execute(
        "select channel, status, last_error from pgnotify.notifications"
        " where booking_id = %s and kind = 'booking_confirmed'",
        (booking,),
    ).fetchall()
    return {channel: (status, error) for channel, status, error in rows}


@pytest.mark.timeout(90)  # on a daemon without the budget, the CPU bomb never ends
async def test_a_shops_runaway_templates_fail_alone_while_the_daemon_serves_everyone_else(
    db: Conn, clean_db: str, tmp_path: Path
) -> None:
    """While one shop's SMS template loops and its email subject allocates 400 MB, other
    shops (customised or not) are delivered and the health socket answers; the bomb rows end
    ``failed`` naming their files; a shop whose template does not compile does not stop the
    start; the daemon stops cleanly (exit 0, checked by ``running``)."""
    root = tmp_path / "templates"
    bombed, custom, plain, broken = (
        make_world(db, shop_name=name) for name in ("Bomb", "Custom", "Plain", "Broken")
    )
    cpu_bomb = _shop_file(root, bombed.shop_id, "booking_confirmed/sms.txt", CPU_BOMB)
    memory_bomb = _shop_file(
        root, bombed.shop_id, "booking_confirmed/email_subject.txt", MEMORY_BOMB
    )
    _shop_file(root, custom.shop_id, "booking_confirmed/sms.txt", "{{ shop.name }} says {{ time }}")
    syntax_error = _shop_file(root, broken.shop_id, "booking_confirmed/sms.txt", "{% if %}")
    settings = make_settings(
        clean_db,
        tmp_path / "outbox",
        NOTIFICATION_TEMPLATES_DIR=root,
        NOTIFICATION_RENDER_TIMEOUT=RENDER_TIMEOUT,
        NOTIFICATION_LEASE_SECONDS=60.0,
    )
    async with running(settings) as daemon:
        assert daemon.health is not None
        bomb_booking = make_booking(db, bombed)
        await wait_until(
            lambda: count(
                clean_db,
                "booking_id = %s and kind = 'booking_confirmed' and channel = 'sms'"
                " and status = 'sending'",
                (bomb_booking,),
            ),
            timeout=10,
        )
        bomb_started = time.monotonic()
        others = [make_booking(db, world) for world in (custom, plain, broken)]

        def others_done() -> bool:
            return all(
                status != "pending" and status != "sending"
                for booking in others
                for status, _ in _confirmations(db, booking).values()
            )

        while not others_done():
            code, body = await get_health(daemon.health.port, timeout=2.0)
            assert code == 200 and body["ok"], body
            assert time.monotonic() - bomb_started < RENDER_TIMEOUT, "others waited for the bomb"
            await asyncio.sleep(0.2)
        # The bomb is still running: everything above happened meanwhile.
        assert _confirmations(db, bomb_booking)["sms"][0] == "sending"
        code, _ = await get_health(daemon.health.port, timeout=2.0)
        assert code == 200

        for booking in others[:2]:
            assert {s for s, _ in _confirmations(db, booking).values()} == {"sent"}
        broken_rows = _confirmations(db, others[2])
        assert broken_rows["email"][0] == broken_rows["inapp"][0] == "sent"
        status, error = broken_rows["sms"]
        assert status == "failed" and "syntax error" in str(error)
        assert str(syntax_error) in str(error)
        sms = [
            json.loads(line)
            for line in (tmp_path / "outbox" / "sms.jsonl").read_text().splitlines()
        ]
        assert any(m["body"].startswith("Custom says ") for m in sms), sms

        await wait_until(
            lambda: _confirmations(db, bomb_booking)["sms"][0] == "failed",
            timeout=RENDER_TIMEOUT + 20,
        )
        bomb_rows = _confirmations(db, bomb_booking)
        status, error = bomb_rows["sms"]
        assert str(cpu_bomb) in str(error) and "NOTIFICATION_RENDER_TIMEOUT" in str(error)
        status, error = bomb_rows["email"]
        assert status == "failed"
        assert str(memory_bomb) in str(error) and "NOTIFICATION_RENDER_MEMORY_MB" in str(error)
        assert bomb_rows["inapp"][0] == "sent"  # the shop's untouched templates render inline
        code, body = await get_health(daemon.health.port, timeout=2.0)
        assert code == 200 and body["failed"] >= 3
