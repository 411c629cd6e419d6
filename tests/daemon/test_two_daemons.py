"""Two daemons on one queue: SKIP LOCKED shares the work, and nothing is delivered twice."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

import psycopg

from tests.daemon.harness import (
    count_reaches,
    env_for,
    health_becomes,
    message_id_counts,
    queue_burst,
    quiet_booking,
    spawn,
    stop_process,
)
from tests.devcluster import free_port
from tests.peers.smtp import SmtpPeer

Conn = psycopg.Connection[Any]

# Mostly in-app (a database write) so 5,000 rows take seconds; enough email to prove the
# network channel is not sent twice either.
INAPP = 4_700
EMAIL = 300


async def test_two_daemons_deliver_5000_due_rows_each_exactly_once(
    db: Conn, clean_db: str, tmp_path: Path, smtp_server: SmtpPeer
) -> None:
    booking = quiet_booking(db, phone=None)
    ports = [free_port(), free_port()]
    daemons: list[subprocess.Popen[bytes]] = []
    try:
        for i, port in enumerate(ports):
            env = env_for(
                clean_db,
                tmp_path / "outbox",
                SMTP_SERVER=smtp_server.host,
                SMTP_PORT=smtp_server.port,
                SMTP_SECURITY="none",
                NOTIFICATION_WORKERS=3,
                NOTIFICATION_BATCH_SIZE=50,
                NOTIFICATION_HEALTH_ADDR=f"127.0.0.1:{port}",
                # A lease far beyond any batch, even on a loaded machine: this test is
                # about sharing the work, and a rescue would count a second attempt.
                NOTIFICATION_LEASE_SECONDS=120,
                NOTIFICATION_SEND_TIMEOUT=30,
            )
            daemons.append(spawn(env, tmp_path / f"daemon-{i}.log"))
        for port in ports:
            await health_becomes(port, 200)
        # One commit, one NOTIFY: both daemons wake for the same 5,000 rows.
        with db.transaction():
            ids = queue_burst(db, booking, INAPP, ("inapp",))
            ids += queue_burst(db, booking, EMAIL, ("email",))
        await count_reaches(clean_db, INAPP + EMAIL, "status = 'sent'", timeout=60)
        for proc in daemons:
            proc.send_signal(signal.SIGTERM)
        assert [proc.wait(15) for proc in daemons] == [0, 0]
    finally:
        for proc in daemons:
            stop_process(proc)

    rows = db.execute(
        "select status, attempts, claimed_by, count(*) from pgnotify.notifications"
        " where id = any(%s) group by 1, 2, 3",
        (ids,),
    ).fetchall()
    assert {(status, attempts) for status, attempts, _, _ in rows} == {("sent", 1)}
    share = {claimed_by: n for _, _, claimed_by, n in rows}
    assert len(share) == 2, f"one daemon did all the work: {share}"
    assert db.execute(
        "select count(*), count(distinct notification_id) from pgnotify.inbox"
    ).fetchone() == (INAPP, INAPP)
    received = message_id_counts(smtp_server.messages)
    assert len(received) == EMAIL
    assert set(received.values()) == {1}
