"""A daemon that lost its lease cannot record over the row another daemon re-claimed.

Daemon A claims an email and sends it, then loses the database (a proxy between A and
Postgres goes half-open) before it can record the outcome, and keeps retrying the record
as it must. A's lease runs out; daemon B rescues the row, claims it and sends it too (its
SMTP peer holds the message for a while). Then A's path heals while B's send is still in
flight, and A's retried record reaches the database. It must change nothing: the row is
B's (``claimed_by``), so A drops its outcome and says so, and the row ends recorded once,
by B. The send timeout is always below the lease (settings refuse otherwise): an outcome
outlives its lease when it cannot be recorded, not when a send runs long.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.daemon.harness import (
    env_for,
    logged,
    logged_at,
    queue_burst,
    quiet_booking,
    spawn,
    stop_process,
    wait_until,
)
from tests.faults.proxy import TcpProxy
from tests.peers.smtp import SmtpPeer

Conn = psycopg.Connection[Any]

# B holds its send this long: A's record must come back within it.
B_STALL = 10.0


@pytest.fixture
def pg_proxy(clean_db: str) -> Iterator[TcpProxy]:
    """A TCP proxy in front of the test's Postgres server."""
    info = conninfo_to_dict(clean_db)
    proxy = TcpProxy(str(info.get("host") or "127.0.0.1"), int(info.get("port") or 5432)).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def second_smtp_server() -> Iterator[SmtpPeer]:
    peer = SmtpPeer().start()
    yield peer
    peer.stop()


def through(proxy: TcpProxy, dsn: str) -> str:
    """``dsn`` with its host and port replaced by the proxy's."""
    info = conninfo_to_dict(dsn)
    info.update(host=proxy.host, port=str(proxy.port))
    return make_conninfo("", **info)  # type: ignore[arg-type]


def row(db: Conn, notification_id: int) -> tuple[str, str, int, datetime | None]:
    found = db.execute(
        "select status, claimed_by, attempts, sent_at from pgnotify.notifications where id = %s",
        (notification_id,),
    ).fetchone()
    assert found is not None
    return found


def held_by(db: Conn, notification_id: int, proc: subprocess.Popen[bytes]) -> bool:
    """The row is in ``sending`` under a claim of that daemon (``host:pid:suffix``)."""
    status, claimed_by, _, _ = row(db, notification_id)
    return status == "sending" and f":{proc.pid}:" in (claimed_by or "")


def smtp_env(peer: SmtpPeer) -> dict[str, Any]:
    return {"SMTP_SERVER": peer.host, "SMTP_PORT": peer.port, "SMTP_SECURITY": "none"}


def stop_both(*procs: subprocess.Popen[bytes]) -> list[int]:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    return [proc.wait(20) for proc in procs]


async def test_a_stale_daemon_cannot_record_over_a_row_another_daemon_reclaimed(
    db: Conn,
    clean_db: str,
    tmp_path: Path,
    smtp_server: SmtpPeer,
    second_smtp_server: SmtpPeer,
    pg_proxy: TcpProxy,
) -> None:
    peer_a, peer_b = smtp_server, second_smtp_server
    (nid,) = queue_burst(db, quiet_booking(db, phone=None, with_user=False), 1)
    one_at_a_time = {"NOTIFICATION_WORKERS": 1, "NOTIFICATION_BATCH_SIZE": 1}
    env_a = env_for(
        through(pg_proxy, clean_db),
        tmp_path / "outbox",
        NOTIFICATION_SEND_TIMEOUT=3,
        NOTIFICATION_LEASE_SECONDS=4,
        NOTIFICATION_HEALTH_ADDR="",
        **one_at_a_time,
        **smtp_env(peer_a),
    )
    env_b = env_for(
        clean_db,
        tmp_path / "outbox",
        NOTIFICATION_SEND_TIMEOUT=B_STALL + 2,
        NOTIFICATION_LEASE_SECONDS=B_STALL + 3,
        NOTIFICATION_HEALTH_ADDR="",
        **one_at_a_time,
        **smtp_env(peer_b),
    )
    log_a, log_b = tmp_path / "daemon-a.log", tmp_path / "daemon-b.log"
    # A's send takes a moment: time to cut A off the database before it records.
    peer_a.stall_next(1.5, stage="DATA")
    peer_b.stall_next(B_STALL, stage="DATA")

    a = spawn(env_a, log_a)
    b: subprocess.Popen[bytes] | None = None
    try:
        await wait_until(lambda: held_by(db, nid, a), timeout=20)
        pg_proxy.stop_forwarding()
        peer_a.wait_for(1, timeout=10)  # A's send went out; its record cannot land

        b = spawn(env_b, log_b)
        # A's lease runs out, B's rescuer gives the row back, B claims and sends it.
        await wait_until(lambda: held_by(db, nid, b), timeout=25)
        assert row(db, nid)[2] == 2
        assert peer_b.messages == []
        pg_proxy.resume_forwarding()

        (dropped,) = await wait_until(lambda: logged(log_a, "outcome_dropped"), timeout=B_STALL)
        await wait_until(lambda: row(db, nid)[0] == "sent", timeout=B_STALL + 10)
        assert a.poll() is None and b.poll() is None, "a daemon died"
        assert stop_both(a, b) == [0, 0]
    finally:
        stop_process(a)
        if b is not None:
            stop_process(b)

    # A's record reached the database while B still held the row, and was refused.
    (b_received,) = peer_b.messages
    assert logged_at(dropped) < b_received.wall, "A's record came too late to meet B's claim"
    assert (dropped["id"], dropped["status"]) == (nid, "sent")
    # The row was recorded once, by B, after B's send.
    status, claimed_by, attempts, sent_at = row(db, nid)
    assert (status, attempts) == ("sent", 2)
    assert f":{b.pid}:" in (claimed_by or "")
    assert sent_at is not None and sent_at.timestamp() >= b_received.wall - 1.0
    assert [e["ids"] for e in logged(log_b, "sent")] == [[nid]]
    assert logged(log_b, "outcome_dropped") == []
    assert logged(log_a, "sent") == []
