"""A real PgBouncer in front of the test database: Debian's ``pgbouncer``, transaction mode.

The configuration is the README's (section "Running several daemons"): transaction
pooling and every other setting at its default, except what a test rig must choose
itself: a free port on 127.0.0.1 and ``auth_type = trust`` with the users listed in
``auth_file``, because the test server trusts local connections too. The fallback
database ``*`` passes any database name through to the server, so one PgBouncer serves
the session's test database and any other.

PgBouncer refuses to run as root: under root it is started with ``-u postgres``, and its
files live in a directory that user can read. Its log (stderr) is kept in a file the
tests can show when something fails. ``make test`` installs the package when missing;
outside it, a missing ``pgbouncer`` fails the session with what to install (never a skip).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.devcluster import free_port

# Debian installs it in /usr/sbin, which a non-root PATH may lack.
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])

# The lines that matter, as the README gives them; the rest are the rig's (see above).
POOL_LINES = "pool_mode = transaction"

# Login roles the tests connect as through PgBouncer (trust still wants them listed).
TEST_USERS = ("postgres", "pgnotify_test_pooler_login")


@dataclass(frozen=True)
class PgBouncer:
    """A running PgBouncer: where it listens and where it logs."""

    host: str
    port: int
    log: Path
    config: Path

    def url(self, dsn: str) -> str:
        """``dsn`` (same user and database) through PgBouncer instead of the server."""
        return make_conninfo(dsn, host=self.host, port=str(self.port))

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def find_pgbouncer() -> str:
    """The ``pgbouncer`` executable, or a failure saying how to get it."""
    found = shutil.which("pgbouncer", path=SEARCH_PATH)
    if not found:
        pytest.fail(
            "pgbouncer is not installed: `make test` installs it as root"
            " (apt-get install pgbouncer); otherwise install it yourself",
            pytrace=False,
        )
    return found


def write_config(directory: Path, server_dsn: str, port: int, users: Sequence[str]) -> Path:
    """``pgbouncer.ini`` and its ``userlist.txt`` in ``directory``."""
    server = conninfo_to_dict(server_dsn)
    host, server_port = server.get("host") or "127.0.0.1", server.get("port") or "5432"
    userlist = directory / "userlist.txt"
    userlist.write_text("".join(f'"{u}" ""\n' for u in users))
    config = directory / "pgbouncer.ini"
    config.write_text(
        "[databases]\n"
        f"* = host={host} port={server_port}\n"
        "\n"
        "[pgbouncer]\n"
        f"{POOL_LINES}\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "auth_type = trust\n"
        f"auth_file = {userlist}\n"
    )
    for path in (directory, userlist, config):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return config


def answers(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, connect_timeout=2, autocommit=True) as conn:
            conn.execute("select 1")
        return True
    except psycopg.OperationalError:
        return False


@contextlib.contextmanager
def running_pgbouncer(server_dsn: str, users: Sequence[str] = ()) -> Iterator[PgBouncer]:
    """Start PgBouncer in front of ``server_dsn``'s server; stop it (SIGTERM) afterwards."""
    executable = find_pgbouncer()
    user = conninfo_to_dict(server_dsn).get("user") or os.environ.get("USER") or "postgres"
    all_users = sorted({str(user), *TEST_USERS, *users})
    as_postgres = ["-u", "postgres"] if os.geteuid() == 0 else []
    with tempfile.TemporaryDirectory(prefix="pgnotify-pgbouncer-") as tmp:
        directory = Path(tmp)
        log = directory / "pgbouncer.log"
        for _ in range(3):  # another process may take the free port before PgBouncer does
            port = free_port()
            config = write_config(directory, server_dsn, port, all_users)
            with log.open("ab") as out:
                proc = subprocess.Popen(
                    [executable, *as_postgres, str(config)], stdout=out, stderr=out
                )
            bouncer = PgBouncer("127.0.0.1", port, log, config)
            deadline = time.monotonic() + 15
            while proc.poll() is None and time.monotonic() < deadline:
                if answers(bouncer.url(server_dsn)):
                    break
                time.sleep(0.1)
            if proc.poll() is None and answers(bouncer.url(server_dsn)):
                break
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(10)
        else:
            pytest.fail(f"pgbouncer did not start:\n{log.read_text(errors='replace')}")
        try:
            yield bouncer
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@pytest.fixture(scope="session")
def pgbouncer(database_url: str) -> Iterator[PgBouncer]:
    """The session's PgBouncer, in transaction mode, in front of the test server."""
    with running_pgbouncer(database_url) as bouncer:
        yield bouncer
