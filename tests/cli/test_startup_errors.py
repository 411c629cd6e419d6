"""Start-up errors as an operator meets them: every command that cannot work stops at once
with exit 2 and one line naming what to fix, never a traceback, never a secret.

Each test runs ``pgnotify`` as a subprocess, as systemd or a shell would.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.conftest import PgServer
from tests.devcluster import fresh_database
from tests.faults.proxy import TcpProxy

ROOT = Path(__file__).resolve().parents[2]
# Long enough to notice a daemon that waits instead of stopping; a start takes ~2 s.
START_TIMEOUT = 60


def _env(env: dict[str, str]) -> dict[str, str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NOTIFICATION_", "SMTP_", "TWILIO_", "DATABASE_URL", "LISTEN_", "PG"))
    }
    return {**clean, "NOTIFICATION_HEALTH_ADDR": "", "NOTIFICATION_LOG_FORMAT": "json", **env}


def pgnotify(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``pgnotify ARGS`` with only ``env`` set; a command still running after
    ``START_TIMEOUT`` seconds is killed and fails the test (it should have stopped)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgnotify.cli", *args],
        env=_env(env),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=START_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"pgnotify {' '.join(args)} still ran after {START_TIMEOUT}s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def stopped_with_one_line(proc: subprocess.CompletedProcess[str]) -> str:
    """Exit 2, no traceback, and the one line that says why (the last line of stderr)."""
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert "Traceback" not in output, output
    lines = proc.stderr.strip().splitlines()
    assert lines, output
    return lines[-1]


def secret_forms(secret: str) -> set[str]:
    """A secret as it may be printed: as given and percent-encoded."""
    return {secret, quote(secret, safe=""), quote(secret)}


def assert_no_secret(text: str, *secrets: str) -> None:
    found = sorted(form for s in secrets for form in secret_forms(s) if form in text)
    assert found == [], f"secrets in the output: {found}\n{text}"


def user_of(dsn: str) -> str:
    return str(conninfo_to_dict(dsn).get("user") or os.environ.get("USER", "postgres"))


def server_url(dsn: str, *, user: str, password: str, dbname: str) -> str:
    """A URL to ``dsn``'s server with these credentials and database."""
    info = conninfo_to_dict(dsn)
    host, port = info.get("host") or "127.0.0.1", info.get("port") or "5432"
    return f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/{dbname}"


# -- DATABASE_URL that cannot be parsed ------------------------------------------------------

PASSWORD = "pw-Ab3$x"  # "$" is percent-encoded in the URL as %24


@pytest.mark.parametrize("command", ["run", "status", "check", "migrate"])
@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://daemon:{quote(PASSWORD, safe='')}%zz@127.0.0.1/app",
        f"postgresql://daemon:{quote(PASSWORD, safe='')}@127.0.0.1:notaport/app",
        f"postgresql://daemon:{quote(PASSWORD, safe='')}@[::1/app",
        f"host=127.0.0.1 dbname=app user=daemon password='{PASSWORD}",
    ],
    ids=["bad-percent-escape", "non-numeric-port", "unclosed-ipv6", "unterminated-quote"],
)
def test_an_unusable_database_url_stops_every_command_without_its_password(
    tmp_path: Path, command: str, url: str
) -> None:
    """Exit 2 naming DATABASE_URL; neither the password nor the URL's user-info is shown."""
    line = stopped_with_one_line(pgnotify(command, env={"DATABASE_URL": url}, cwd=tmp_path))
    assert "DATABASE_URL" in line
    assert_no_secret(line, PASSWORD, f"daemon:{quote(PASSWORD, safe='')}")


def test_an_unusable_listen_url_is_named_too(tmp_path: Path) -> None:
    url = f"postgresql://daemon:{quote(PASSWORD, safe='')}@127.0.0.1:99999/app"
    proc = pgnotify("run", env={"LISTEN_DATABASE_URL": url}, cwd=tmp_path)
    line = stopped_with_one_line(proc)
    assert "LISTEN_DATABASE_URL" in line
    assert_no_secret(proc.stdout + proc.stderr, PASSWORD)


# -- a database that is not ready for this version --------------------------------------------


@pytest.fixture
def empty_db(pg_server: PgServer) -> Iterator[str]:
    """A database of its own, never migrated."""
    with fresh_database(pg_server.admin_dsn, prefix="pgnotify_start", migrated=False) as dsn:
        yield dsn


@pytest.fixture
def behind_db(pg_server: PgServer) -> Iterator[tuple[str, str]]:
    """A migrated database that lacks this install's last migration: (dsn, its name)."""
    with fresh_database(pg_server.admin_dsn, prefix="pgnotify_behind") as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute(
                "delete from pgnotify.schema_migrations"
                " where version = (select max(version) from pgnotify.schema_migrations)"
                " returning name"
            ).fetchone()
        assert row is not None
        yield dsn, row[0]


def test_run_on_a_database_without_the_schema_exits_2_saying_run_migrate(
    empty_db: str, tmp_path: Path
) -> None:
    """No waiting for a schema that will not come: exit 2 and the command that fixes it."""
    line = stopped_with_one_line(pgnotify("run", env={"DATABASE_URL": empty_db}, cwd=tmp_path))
    assert "run pgnotify migrate" in line
    assert "database_not_migrated" in line


def test_run_with_pending_migrations_exits_2_naming_them(
    behind_db: tuple[str, str], tmp_path: Path
) -> None:
    """A database behind this install would be served with the wrong schema: exit 2."""
    dsn, missing = behind_db
    line = stopped_with_one_line(pgnotify("run", env={"DATABASE_URL": dsn}, cwd=tmp_path))
    assert "run pgnotify migrate" in line
    assert missing in line


def test_run_as_a_role_the_server_refuses_exits_2_without_retrying(
    clean_db: str, tmp_path: Path
) -> None:
    """A role that does not exist is a configuration error, not an outage: exit 2 at once.

    The role's name is the password itself (an operator's slip): it is still never shown.
    """
    secret = f"pw-{uuid.uuid4().hex}"
    url = server_url(clean_db, user=secret, password=secret, dbname="whatever")
    proc = pgnotify("run", env={"DATABASE_URL": url}, cwd=tmp_path)
    line = stopped_with_one_line(proc)
    assert "database_refused" in line
    assert "InvalidAuthorizationSpecificationError" in line
    assert_no_secret(proc.stdout + proc.stderr, secret)


# -- the health address ---------------------------------------------------------------------


def test_a_health_address_in_use_exits_2_naming_the_setting(clean_db: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = pgnotify(
            "run",
            env={"DATABASE_URL": clean_db, "NOTIFICATION_HEALTH_ADDR": f"127.0.0.1:{port}"},
            cwd=tmp_path,
        )
    line = stopped_with_one_line(proc)
    assert "NOTIFICATION_HEALTH_ADDR" in line
    assert f"127.0.0.1:{port}" in line


# -- database errors in the other commands ----------------------------------------------------


@pytest.fixture
def stranger(db: psycopg.Connection[Any], clean_db: str) -> Iterator[str]:
    """The DSN of a login role with no right on pgnotify's schema."""
    role = f"pgnotify_stranger_{uuid.uuid4().hex[:8]}"
    db.execute(f"create role {role} login")
    try:
        info = conninfo_to_dict(clean_db)
        info["user"] = role
        yield make_conninfo("", **info)  # type: ignore[arg-type]
    finally:
        db.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity where usename = %s", (role,)
        )
        db.execute(f"drop role if exists {role}")


@pytest.mark.parametrize(
    "args",
    [("status",), ("retry", "1"), ("demo",)],
    ids=["status", "retry", "demo"],
)
def test_a_missing_privilege_is_one_line_and_exit_2(
    stranger: str, tmp_path: Path, args: tuple[str, ...]
) -> None:
    """The database refusing our role is a configuration error, told in one line."""
    line = stopped_with_one_line(pgnotify(*args, env={"DATABASE_URL": stranger}, cwd=tmp_path))
    assert re.match(r"pgnotify: InsufficientPrivilege: permission denied", line), line


def test_check_tells_a_missing_privilege_apart_from_a_missing_migration(
    stranger: str, tmp_path: Path
) -> None:
    env = {"DATABASE_URL": stranger, "NOTIFICATION_OUTBOX_DIR": str(tmp_path / "outbox")}
    proc = pgnotify("check", env=env, cwd=tmp_path)
    assert proc.returncode == 1
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("FAIL database")]
    assert "InsufficientPrivilege: permission denied for schema pgnotify" in line, line
    assert "migrate" not in line


def test_any_other_database_error_is_one_line_and_exit_1(clean_db: str, tmp_path: Path) -> None:
    """A command the database refuses (here: a read-only session) fails alone: exit 1."""
    proc = pgnotify(
        "demo",
        env={"DATABASE_URL": clean_db, "PGOPTIONS": "-c default_transaction_read_only=on"},
        cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert re.fullmatch(r"pgnotify: ReadOnlySqlTransaction: [^\n]*read-only[^\n]*\n", proc.stderr)


# -- secrets through every error path ---------------------------------------------------------


def test_no_secret_in_connect_errors_of_status_and_check(clean_db: str, tmp_path: Path) -> None:
    """The password also used as the database's name reaches libpq's error: it is hidden."""
    secret = f"pw-{uuid.uuid4().hex}"
    url = server_url(clean_db, user=user_of(clean_db), password=secret, dbname=secret)
    env = {"DATABASE_URL": url, "NOTIFICATION_OUTBOX_DIR": str(tmp_path / "outbox")}
    status = pgnotify("status", env=env, cwd=tmp_path)
    assert status.returncode == 2, status.stderr
    assert "cannot connect to" in status.stderr
    check = pgnotify("check", env=env, cwd=tmp_path)
    assert check.returncode == 1
    assert "FAIL database" in check.stdout
    assert_no_secret(status.stdout + status.stderr + check.stdout + check.stderr, secret)


def test_no_secret_in_settings_errors_that_echo_a_value(tmp_path: Path) -> None:
    """A secret pasted into the wrong variable is echoed by its error: it is hidden."""
    smtp, token = f"smtp-{uuid.uuid4().hex}", f"tok-{uuid.uuid4().hex}"
    env = {
        "SMTP_SERVER": "127.0.0.1",
        "SMTP_USERNAME": "mailer",
        "SMTP_PASSWORD": smtp,
        "FROM_EMAIL": smtp,
        "TWILIO_ACCOUNT_SID": "AC123",
        "TWILIO_AUTH_TOKEN": token,
        "TWILIO_PHONE_NUMBER": token,
    }
    proc = pgnotify("check", env=env, cwd=tmp_path)
    line = stopped_with_one_line(proc)
    assert "FROM_EMAIL" in line and "TWILIO_PHONE_NUMBER" in line
    assert_no_secret(proc.stdout + proc.stderr, smtp, token)


def test_no_secret_in_the_daemons_logged_listener_errors(clean_db: str, tmp_path: Path) -> None:
    """The LISTEN URL names a database that does not exist, named like its password: the
    daemon runs on its pool, logs each failed LISTEN connect, and never shows the name."""
    secret = f"pw-{uuid.uuid4().hex}"
    listen = server_url(clean_db, user=user_of(clean_db), password=secret, dbname=secret)
    log = tmp_path / "daemon.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pgnotify.cli", "run"],
            env=_env(
                {
                    "DATABASE_URL": clean_db,
                    "LISTEN_DATABASE_URL": listen,
                    "NOTIFICATION_OUTBOX_DIR": str(tmp_path / "outbox"),
                }
            ),
            cwd=tmp_path,
            stdout=out,
            stderr=out,
        )
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while log.read_text().count("listener_connect_failed") < 2:
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    output = log.read_text()
    assert "does not exist" in output  # the failure was logged, with the server's reason
    assert_no_secret(output, secret)


# -- a stop while connecting ------------------------------------------------------------------


def test_a_second_sigterm_while_connecting_exits_1(clean_db: str, tmp_path: Path) -> None:
    """Stop requests during the first connect end the start; the second one's exit 1 is kept."""
    info = conninfo_to_dict(clean_db)
    proxy = TcpProxy(str(info.get("host") or "127.0.0.1"), int(info.get("port") or 5432)).start()
    proxy.stop_forwarding()  # connections are held: the daemon waits in its first connect
    try:
        info.update(host=proxy.host, port=str(proxy.port))
        env = {
            "DATABASE_URL": make_conninfo("", **info),  # type: ignore[arg-type]
            "NOTIFICATION_DB_TIMEOUT": "6",
            "NOTIFICATION_OUTBOX_DIR": str(tmp_path / "outbox"),
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "pgnotify.cli", "run"],
            env=_env(env),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while proxy.accepted == 0:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        proxy.stop()
    assert proc.returncode == 1, out
    assert '"ready"' not in out


def test_a_link_base_url_without_its_secret_stops_every_command_naming_it(
    tmp_path: Path,
) -> None:
    """Links cannot be signed without a secret: exit 2 naming NOTIFICATION_LINK_SECRET."""
    env = {"NOTIFICATION_LINK_BASE_URL": "https://book.example.com"}
    for command in ("run", "check"):
        line = stopped_with_one_line(pgnotify(command, env=env, cwd=tmp_path))
        assert "NOTIFICATION_LINK_SECRET" in line


def test_the_link_secret_is_never_printed_even_pasted_into_the_base_url(tmp_path: Path) -> None:
    """A clear-text base URL carrying the secret is refused naming the variable; the secret
    appears nowhere in the output."""
    secret = f"link-{uuid.uuid4().hex}"
    env = {
        "NOTIFICATION_LINK_BASE_URL": f"http://book.example.com/{secret}",
        "NOTIFICATION_LINK_SECRET": secret,
    }
    proc = pgnotify("check", env=env, cwd=tmp_path)
    line = stopped_with_one_line(proc)
    assert "NOTIFICATION_LINK_BASE_URL" in line
    assert_no_secret(proc.stdout + proc.stderr, secret)
