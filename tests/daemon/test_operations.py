"""What an operator relies on, seen on a running daemon: retention, templates, pauses, logs.

- The retention loop purges finished rows past ``NOTIFICATION_RETENTION_DAYS``, again and
  again, every ``NOTIFICATION_PURGE_INTERVAL`` (an hour by default; a second here).
- ``NOTIFICATION_TEMPLATES_DIR`` overrides a shipped template, file by file.
- A channel paused because the provider rejected our credentials resumes by itself once
  the provider accepts them again: no restart, no attempt spent.
- No secret (database password, SMTP password, Twilio auth token) reaches the log, even
  through the failures that log errors.
"""

from __future__ import annotations

import asyncio
import base64
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgnotify.daemon import Daemon
from pgnotify.errors import SettingsError
from pgnotify.pauses import ChannelPauses
from pgnotify.settings import Settings, load_settings
from tests.daemon.harness import (
    count,
    count_reaches,
    env_for,
    logged,
    make_settings,
    queue_burst,
    quiet_booking,
    running,
    smtp_settings,
    spawn,
    stop_process,
    wait_until,
)
from tests.peers.smtp import SmtpPeer
from tests.peers.twilio import TwilioPeer

Conn = psycopg.Connection[Any]

# The SMTP peers here ask for AUTH without TLS, as a local relay may; aiosmtpd warns.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")


def set_rows(db: Conn, ids: list[int], status: str, age: str, **extra: Any) -> None:
    """Put rows in ``status``, last changed ``age`` ago (an interval, e.g. ``2 days``)."""
    sets = "".join(f", {column} = %({column})s" for column in extra)
    db.execute(
        "update pgnotify.notifications set status = %(status)s,"
        " updated_at = now() - %(age)s::interval" + sets + " where id = any(%(ids)s)",
        {"status": status, "age": age, "ids": ids, **extra},
    )


def existing(db: Conn, ids: list[int]) -> set[int]:
    rows = db.execute("select id from pgnotify.notifications where id = any(%s)", (ids,))
    return {r[0] for r in rows.fetchall()}


# -- retention ---------------------------------------------------------------------------


async def test_the_retention_loop_purges_finished_rows_past_retention_every_interval(
    db: Conn, clean_db: str, tmp_path: Path
) -> None:
    """Old sent/skipped/cancelled rows go; dead letters, pending and recent rows stay; again."""
    booking = quiet_booking(db, phone=None, with_user=False)
    old_finished = queue_burst(db, booking, 3)
    for nid, status in zip(old_finished, ("sent", "skipped", "cancelled"), strict=True):
        set_rows(db, [nid], status, "2 days")
    (old_failed,) = queue_burst(db, booking, 1)
    set_rows(db, [old_failed], "failed", "2 days")  # a dead letter waits for an operator
    (old_pending,) = queue_burst(db, booking, 1)
    # Not due for a day: the daemon leaves it alone, and so must the purge.
    db.execute(
        "update pgnotify.notifications set run_at = now() + interval '1 day',"
        " updated_at = now() - interval '2 days' where id = %s",
        (old_pending,),
    )
    (recent,) = queue_burst(db, booking, 1)
    set_rows(db, [recent], "sent", "1 hour")
    kept = [old_failed, old_pending, recent]

    settings = make_settings(
        clean_db, tmp_path, NOTIFICATION_RETENTION_DAYS=1, NOTIFICATION_PURGE_INTERVAL=1.0
    )
    async with running(settings):
        await wait_until(lambda: not existing(db, old_finished), timeout=10)
        assert existing(db, kept) == set(kept)
        # The loop runs again: a row that crossed the retention age since goes too.
        set_rows(db, [recent], "sent", "2 days")
        await wait_until(lambda: not existing(db, [recent]), timeout=10)
        assert existing(db, kept) == {old_failed, old_pending}


@pytest.mark.parametrize("interval", ["0", "-1", "inf", "nan"])
def test_the_purge_interval_must_be_a_positive_finite_number_of_seconds(interval: str) -> None:
    with pytest.raises(SettingsError, match="NOTIFICATION_PURGE_INTERVAL"):
        load_settings(_env_file=None, NOTIFICATION_PURGE_INTERVAL=interval)


# -- templates ---------------------------------------------------------------------------


async def test_an_operator_template_folder_overrides_a_shipped_template_file_by_file(
    db: Conn, clean_db: str, tmp_path: Path, smtp_server: SmtpPeer
) -> None:
    """The operator's subject is used; the body the operator did not override is shipped."""
    folder = tmp_path / "operator-templates" / "en" / "booking_confirmed"
    folder.mkdir(parents=True)
    (folder / "email_subject.txt").write_text("Operator's own subject for {{ service.name }}\n")
    booking = quiet_booking(db, phone=None, with_user=False, service_name="Beard trim")
    queue_burst(db, booking, 1)

    settings = make_settings(
        clean_db,
        tmp_path,
        NOTIFICATION_TEMPLATES_DIR=tmp_path / "operator-templates",
        **smtp_settings(smtp_server),
    )
    async with running(settings):
        (received,) = await asyncio.to_thread(smtp_server.wait_for, 1, 15)
    message = received.parsed()
    assert message["Subject"] == "Operator's own subject for Beard trim"
    text = message.get_body(("plain",))
    assert text is not None
    assert "Your booking is confirmed" in text.get_content()  # the shipped email.txt


# -- a paused channel resumes ------------------------------------------------------------

SMTP_USER = "mailer"
SMTP_PASSWORD = "right-password"


async def all_sent(dsn: str, ids: list[int]) -> bool:
    return await count(dsn, "id = any(%s) and status = 'sent'", (ids,)) == len(ids)


@asynccontextmanager
async def running_with_short_pauses(settings: Settings) -> AsyncIterator[Daemon]:
    """A daemon on the test's loop whose channel pauses last 1-2 s instead of 30-600 s.

    The pause length is the only thing changed (``ChannelPauses`` takes it as a
    parameter), before the daemon starts; what pauses and what resumes is the daemon's.
    """
    daemon = Daemon(settings)
    daemon.shared.pauses = ChannelPauses(base=1.0, cap=2.0)
    task = asyncio.create_task(daemon.run(install_signals=False))
    try:
        await wait_until(lambda: daemon.listener.connected or task.done(), timeout=15)
        assert not task.done(), f"the daemon ended before it listened: exit {task.result()}"
        yield daemon
        assert not task.done(), "the daemon stopped by itself during the test"
    finally:
        daemon.stop()
        code = await asyncio.wait_for(task, 30)
    assert code == 0


@pytest.fixture
def smtp_with_auth() -> Iterator[SmtpPeer]:
    """Plain SMTP that requires AUTH (no TLS: a local relay)."""
    peer = SmtpPeer(auth=(SMTP_USER, SMTP_PASSWORD)).start()
    yield peer
    peer.stop()


async def test_a_channel_paused_by_rejected_credentials_resumes_when_they_work_again(
    db: Conn, clean_db: str, tmp_path: Path, smtp_with_auth: SmtpPeer
) -> None:
    """535 pauses email (rows released, degraded); once logins work, every row is sent."""
    peer = smtp_with_auth
    peer.credentials = (SMTP_USER, "rotated-by-the-provider")  # our login is refused
    ids = queue_burst(db, quiet_booking(db, phone=None, with_user=False), 3)
    settings = make_settings(
        clean_db,
        tmp_path,
        SMTP_USERNAME=SMTP_USER,
        SMTP_PASSWORD=SMTP_PASSWORD,
        **smtp_settings(peer),
    )
    async with running_with_short_pauses(settings) as daemon:
        await count_reaches(
            clean_db,
            3,
            "status = 'pending' and attempts = 0 and last_error like 'channel paused: SMTP 535%%'",
            timeout=15,
        )
        await wait_until(lambda: daemon.snapshot()["channels"]["email"]["state"] == "degraded")
        assert peer.messages == []

        peer.credentials = (SMTP_USER, SMTP_PASSWORD)
        await wait_until(lambda: all_sent(clean_db, ids), timeout=15)
        assert daemon.snapshot()["channels"]["email"]["state"] == "ok"
    assert len(peer.messages) == 3
    # Paused attempts were given back: each row spent exactly the attempt that worked.
    assert await count(clean_db, "id = any(%s) and attempts = 1", (ids,)) == 3


# -- secrets stay out of the log ---------------------------------------------------------


@pytest.fixture
def login_role(db: Conn, clean_db: str) -> Iterator[tuple[str, str]]:
    """A role with a password (trust auth ignores it: it only has to be in the URL).

    Created NOLOGIN, so the daemon's first LISTEN connections fail; the test grants LOGIN.
    Yields (role, password).
    """
    role = f"pgnotify_test_{uuid.uuid4().hex[:10]}"
    password = f"db-secret-{uuid.uuid4().hex}"
    db.execute(f"create role {role} nologin password '{password}' in role pgnotify_daemon")
    try:
        yield role, password
    finally:
        db.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity where usename = %s", (role,)
        )
        db.execute(f"drop role if exists {role}")


def secret_forms(secret: str, *logins: str) -> set[str]:
    """A secret as it could appear: plain, URL-quoted, base64 alone and in auth blobs."""
    forms = {secret, quote(secret, safe=""), base64.b64encode(secret.encode()).decode()}
    for login in logins:
        forms.add(base64.b64encode(f"\0{login}\0{secret}".encode()).decode())  # AUTH PLAIN
        forms.add(base64.b64encode(f"{login}:{secret}".encode()).decode())  # HTTP basic
    return forms


async def test_no_secret_reaches_the_log_through_database_smtp_and_twilio_failures(
    db: Conn,
    clean_db: str,
    tmp_path: Path,
    login_role: tuple[str, str],
    smtp_with_auth: SmtpPeer,
) -> None:
    """A debug-level daemon fails to log in to Postgres, SMTP and Twilio; no secret is logged.

    The refused Postgres login is the LISTEN connection's (the listener retries it): a pool
    the server refuses at start stops the daemon with exit 2 (tests/cli/test_startup_errors.py).
    """
    role, db_password = login_role
    smtp_password = f"smtp-secret-{uuid.uuid4().hex}"  # not the one the peer accepts
    twilio = TwilioPeer(auth_token=f"twilio-secret-{uuid.uuid4().hex}").start()
    try:
        twilio.fail_next(500, code=20500)
        twilio.fail_next(401, code=20003)
        booking = quiet_booking(db, with_user=False)
        queue_burst(db, booking, 1, ("email",))
        queue_burst(db, booking, 2, ("sms",))
        params = conninfo_to_dict(clean_db)
        params.update(user=role, password=db_password)
        env = env_for(
            clean_db,
            tmp_path / "outbox",
            LISTEN_DATABASE_URL=make_conninfo("", **params),  # type: ignore[arg-type]
            NOTIFICATION_LOG_LEVEL="debug",
            NOTIFICATION_HEALTH_ADDR="",
            SMTP_USERNAME=SMTP_USER,
            SMTP_PASSWORD=smtp_password,
            TWILIO_ACCOUNT_SID=twilio.account_sid,
            TWILIO_AUTH_TOKEN=twilio.auth_token,
            TWILIO_PHONE_NUMBER="+15550001111",
            TWILIO_API_URL=twilio.base_url,
            **smtp_settings(smtp_with_auth),
        )
        log = tmp_path / "daemon.log"
        proc = spawn(env, log)
        try:
            await wait_until(lambda: logged(log, "listener_connect_failed"), timeout=20)
            db.execute(f"alter role {role} login")
            # Email paused (535), one SMS released (401), one retried (500).
            await wait_until(lambda: len(logged(log, "released")) >= 2, timeout=20)
            await wait_until(lambda: logged(log, "retry_scheduled"), timeout=10)
            # The database drops every connection of the daemon; it reconnects.
            db.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity where usename = %s",
                (role,),
            )
            # (The first "listener_restored" followed the refused logins above.)
            await wait_until(lambda: logged(log, "listener_lost"), timeout=20)
            await wait_until(lambda: len(logged(log, "listener_restored")) >= 2, timeout=20)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0
        finally:
            stop_process(proc)
    finally:
        twilio.stop()

    # The failures really happened, and were logged with their errors.
    errors = " ".join(str(e.get("error")) for e in logged(log))
    for expected in ("not permitted to log in", "SMTP 535", "Twilio HTTP 401", "Twilio HTTP 500"):
        assert expected in errors, f"no logged error mentions {expected!r}"
    assert logged(log, "listener_lost")

    output = log.read_text(errors="replace")
    leaks = (
        secret_forms(db_password, role)
        | secret_forms(smtp_password, SMTP_USER)
        | secret_forms(twilio.auth_token, twilio.account_sid)
    )
    found = sorted(form for form in leaks if form in output)
    assert found == [], f"secrets in the daemon's log: {found}"
