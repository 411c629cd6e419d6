"""The `pgnotify` command line, run as an operator runs it (a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg

from tests.factories import make_booking, make_payment, make_world
from tests.peers.smtp import SmtpPeer

Conn = psycopg.Connection[Any]


def pgnotify(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NOTIFICATION_", "SMTP_", "TWILIO_", "DATABASE_URL"))
    }
    return subprocess.run(
        [sys.executable, "-m", "pgnotify.cli", *args],
        env={**clean, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_help_lists_every_command_with_its_purpose(tmp_path: Path) -> None:
    out = pgnotify("--help", env={}, cwd=tmp_path).stdout
    for command in ("migrate", "run", "status", "check", "render", "retry", "demo"):
        assert f"    {command} " in out


def test_a_bad_setting_names_the_variable_and_exits_2(tmp_path: Path) -> None:
    proc = pgnotify("status", env={"NOTIFICATION_WORKERS": "many"}, cwd=tmp_path)
    assert proc.returncode == 2
    assert "NOTIFICATION_WORKERS" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = pgnotify(
        "status",
        env={"NOTIFICATION_LEASE_SECONDS": "10", "NOTIFICATION_SEND_TIMEOUT": "30"},
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "NOTIFICATION_LEASE_SECONDS must exceed NOTIFICATION_SEND_TIMEOUT" in proc.stderr


def test_check_says_ok_for_each_part_and_fails_on_a_dead_smtp(
    clean_db: str, tmp_path: Path, smtp_server: SmtpPeer
) -> None:
    env = {"DATABASE_URL": clean_db, "NOTIFICATION_OUTBOX_DIR": str(tmp_path / "outbox")}
    proc = pgnotify("check", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split()[1].rstrip(":") for line in lines] == [
        "settings",
        "database",
        "catalog",
        "templates",
        "email",
        "sms",
    ]
    assert all(line.startswith("OK") for line in lines)
    # check made the outbox as the channel makes it: the files in it are personal data.
    assert (tmp_path / "outbox").stat().st_mode & 0o777 == 0o700

    env |= {"SMTP_SERVER": "127.0.0.1", "SMTP_PORT": str(smtp_server.port), "SMTP_SECURITY": "none"}
    assert pgnotify("check", env=env, cwd=tmp_path).returncode == 0
    env["SMTP_PORT"] = "1"  # nothing listens there
    proc = pgnotify("check", env=env, cwd=tmp_path)
    assert proc.returncode == 1
    assert any(line.startswith("FAIL smtp") for line in proc.stdout.splitlines())


def test_check_fails_on_an_unmigrated_database(pg_server: Any, tmp_path: Path) -> None:
    proc = pgnotify(
        "check",
        env={"DATABASE_URL": pg_server.admin_dsn, "NOTIFICATION_OUTBOX_DIR": str(tmp_path)},
        cwd=tmp_path,
    )
    assert proc.returncode == 1
    assert "run pgnotify migrate" in proc.stdout


def test_status_as_table_and_json(db: Conn, clean_db: str, tmp_path: Path) -> None:
    make_booking(db, make_world(db))
    proc = pgnotify("status", env={"DATABASE_URL": clean_db}, cwd=tmp_path)
    assert proc.returncode == 0
    assert proc.stdout.splitlines()[0].split()[:4] == ["kind", "channel", "status", "count"]
    rows = json.loads(
        pgnotify("status", "--json", env={"DATABASE_URL": clean_db}, cwd=tmp_path).stdout
    )
    pending = {(r["kind"], r["channel"]): r["count"] for r in rows if r["status"] == "pending"}
    assert pending[("booking_confirmed", "email")] == 1
    assert pending[("reminder_2h", "sms")] == 1


def test_retry_one_and_all_failed(db: Conn, clean_db: str, tmp_path: Path) -> None:
    booking = make_booking(db, make_world(db))
    db.execute(
        "update pgnotify.notifications set status = 'failed', last_error = 'boom'"
        " where booking_id = %s and kind = 'booking_confirmed'",
        (booking,),
    )
    ids = [r[0] for r in db.execute("select id from pgnotify.dead_letters order by id")]
    env = {"DATABASE_URL": clean_db}
    proc = pgnotify("retry", str(ids[0]), env=env, cwd=tmp_path)
    assert proc.returncode == 0 and f"re-queued notification {ids[0]}" in proc.stdout
    assert pgnotify("retry", str(ids[0]), env=env, cwd=tmp_path).returncode == 1
    proc = pgnotify("retry", "--all-failed", "--kind", "booking_confirmed", env=env, cwd=tmp_path)
    assert "re-queued 2 failed notification(s)" in proc.stdout
    assert db.execute("select count(*) from pgnotify.dead_letters").fetchone() == (0,)


def test_demo_inserts_a_booking_whose_notifications_follow(
    db: Conn, clean_db: str, tmp_path: Path
) -> None:
    proc = pgnotify("demo", "--fast", env={"DATABASE_URL": clean_db}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    kinds = {
        r[0] for r in db.execute("select kind from pgnotify.notifications where status = 'pending'")
    }
    assert kinds == {
        "booking_confirmed",
        "payment_confirmed",
        "reminder_24h",
        "reminder_2h",
        "shop_booking_confirmed",
    }
    (due,) = db.execute(
        "select max(run_at - now()) from pgnotify.notifications where status = 'pending'"
    ).fetchone() or (None,)
    assert due is not None and due.total_seconds() < 30


def render(kind: str, booking: UUID, clean_db: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`pgnotify render KIND --booking BOOKING` against the test database."""
    return pgnotify(
        "render", kind, "--booking", str(booking), env={"DATABASE_URL": clean_db}, cwd=cwd
    )


def test_render_previews_a_kind_for_a_booking(db: Conn, clean_db: str, tmp_path: Path) -> None:
    booking = make_booking(db, make_world(db, customer_name="<script>x</script>"))
    proc = render("booking_confirmed", booking, clean_db, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "== email" in proc.stdout and "== sms" in proc.stdout and "== inapp" in proc.stdout
    html_path = next(
        line.split("HTML: ")[1] for line in proc.stdout.splitlines() if line.startswith("HTML: ")
    )
    html = Path(html_path).read_text()
    assert "<script>x</script>" not in html
    assert "&lt;script&gt;" in html
    proc = render("booking_confirmed", UUID(int=0), clean_db, tmp_path)
    assert proc.returncode == 1 and "not found" in proc.stderr


def test_render_previews_a_shop_alert_as_the_shop_gets_it(
    db: Conn, clean_db: str, tmp_path: Path
) -> None:
    """In the shop's language, to the shop's address, with the payment the alert is about,
    and no in-app part (a shop has no inbox)."""
    world = make_world(db, shop_locale="es", customer_locale="en", shop_alerts=True)
    booking = make_booking(db, world)
    make_payment(db, booking, status="failed")
    proc = render("shop_payment_failed", booking, clean_db, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "== email (es) ==\nTo: Fade & Co <hello@fade.example>" in proc.stdout
    assert "el pago de 25,00 € de Ana Pérez" in proc.stdout
    assert "== sms (es" in proc.stdout and "== inapp" not in proc.stdout
