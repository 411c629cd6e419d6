"""`pgnotify retry ID` on a skipped row, as an operator runs it (a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg

from tests.factories import lone_notification

Conn = psycopg.Connection[Any]


def retry_cli(nid: int, database_url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NOTIFICATION_", "SMTP_", "TWILIO_", "DATABASE_URL"))
    }
    return subprocess.run(
        [sys.executable, "-m", "pgnotify.cli", "retry", str(nid)],
        env={**env, "DATABASE_URL": database_url},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_retry_requeues_a_skipped_row_with_the_customers_new_address(
    db: Conn, clean_db: str, tmp_path: Path
) -> None:
    """A row skipped because the customer had no email is re-queued by `pgnotify retry`,
    addressed to the email the customer has now; a second retry is refused (exit 1)."""
    nid = lone_notification(db, email=None)
    assert db.execute(
        "select status from pgnotify.notifications where id = %s", (nid,)
    ).fetchone() == ("skipped",)
    db.execute("update booking.customers set email = 'ana@example.com'")

    proc = retry_cli(nid, clean_db, tmp_path)

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"re-queued notification {nid}\n"
    assert db.execute(
        "select status, recipient, attempts from pgnotify.notifications where id = %s", (nid,)
    ).fetchone() == ("pending", "ana@example.com", 0)

    again = retry_cli(nid, clean_db, tmp_path)
    assert again.returncode == 1
    assert f"notification {nid} is not failed or skipped" in again.stderr
