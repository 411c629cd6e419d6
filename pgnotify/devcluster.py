"""A local PostgreSQL cluster made with the machine's own ``initdb``/``pg_ctl``.

For development and tests only: ``make run`` keeps one under ``.pgdata/`` when no server
answers, and the test suite makes throw-away ones (also to restart or stop Postgres under
a daemon, never the shared server). Postgres refuses to run as root, so as root the
cluster is owned by and run as an unprivileged user (``postgres`` if it exists, else
``nobody``).

``python -m pgnotify.devcluster`` prints a ``DATABASE_URL`` for ``make run``: the one
configured, else a server on localhost, else the ``.pgdata/`` cluster, started as needed.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def find_pg_bin(name: str) -> str | None:
    """The newest PostgreSQL binary ``name`` on PATH or under /usr/lib/postgresql."""
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(Path(p).parts[4]) if Path(p).parts[4].isdigit() else 0,
        reverse=True,
    )
    if candidates:
        return candidates[0]
    return shutil.which(name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalCluster:
    """initdb + pg_ctl in a temporary directory, on a free port on 127.0.0.1."""

    def __init__(self, port: int | None = None, base: Path | None = None) -> None:
        self.initdb = find_pg_bin("initdb")
        self.pg_ctl = find_pg_bin("pg_ctl")
        if not self.initdb or not self.pg_ctl:
            raise RuntimeError("no initdb/pg_ctl found on PATH or in /usr/lib/postgresql")
        self.port = port or free_port()
        if base is None:
            base = Path(tempfile.mkdtemp(prefix="pgnotify-pg-"))
        base.mkdir(parents=True, exist_ok=True)
        self.base = base.resolve()
        self.datadir = self.base / "data"
        self.logfile = self.base / "postgres.log"
        self.user: str | None = None
        if os.geteuid() == 0:
            for candidate in ("postgres", "nobody"):
                with contextlib.suppress(KeyError):
                    pwd.getpwnam(candidate)
                    self.user = candidate
                    break
            if self.user is None:
                raise RuntimeError("running as root and no unprivileged user to run postgres")
            entry = pwd.getpwnam(self.user)
            os.chown(self.base, entry.pw_uid, entry.pw_gid)
            self.base.chmod(0o755)

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            list(args),
            user=self.user,
            check=False,
            capture_output=True,
            text=True,
            cwd=self.base,
        )
        if check and proc.returncode != 0:
            detail = " ".join((proc.stderr or proc.stdout).split())[-500:]
            raise RuntimeError(f"{Path(args[0]).name} failed ({proc.returncode}): {detail}")
        return proc

    @property
    def initialised(self) -> bool:
        return (self.datadir / "PG_VERSION").is_file()

    @property
    def running(self) -> bool:
        assert self.pg_ctl
        return (
            self._run(self.pg_ctl, "-D", str(self.datadir), "status", check=False).returncode == 0
        )

    def init(self) -> LocalCluster:
        assert self.initdb
        self._run(
            self.initdb,
            "-D",
            str(self.datadir),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        return self

    def start(self, timeout: float = 30) -> None:
        assert self.pg_ctl
        opts = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.base} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200"
        )
        self._run(
            self.pg_ctl,
            "-D",
            str(self.datadir),
            "-l",
            str(self.logfile),
            "-o",
            opts,
            "-w",
            "-t",
            str(int(timeout)),
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        assert self.pg_ctl
        self._run(self.pg_ctl, "-D", str(self.datadir), "-m", mode, "-w", "stop", check=False)

    def restart(self) -> None:
        self.stop()
        self.start()

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1),
            ):
                return
            time.sleep(0.1)
        raise TimeoutError(f"postgres on port {self.port} did not come up")

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)


DEV_PORT = 54329


def answers(dsn: str) -> bool:
    """True when a PostgreSQL server accepts this DSN and answers a query."""
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            conn.execute("select 1")
        return True
    except psycopg.Error:
        return False


def _ensure_database(admin_dsn: str, url_without_db: str, name: str = "pgnotify") -> str:
    import psycopg

    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        if not conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone():
            conn.execute(f'create database "{name}"')
    return f"{url_without_db}/{name}"


def dev_database_url(project_dir: Path) -> str:
    """DATABASE_URL if configured, else a local server, else the ``.pgdata/`` cluster."""
    import getpass
    import sys

    from pgnotify.settings import load_settings

    settings = load_settings()
    if "DATABASE_URL" in settings.model_fields_set:
        print("pgnotify: using DATABASE_URL", file=sys.stderr)
        return settings.database_url
    for user in dict.fromkeys([getpass.getuser(), "postgres"]):
        base = f"postgresql://{user}@127.0.0.1:5432"
        if answers(f"{base}/postgres"):
            print(
                f"pgnotify: using the PostgreSQL server on 127.0.0.1:5432 as {user}",
                file=sys.stderr,
            )
            return _ensure_database(f"{base}/postgres", base)
    cluster = LocalCluster(port=DEV_PORT, base=project_dir / ".pgdata")
    who = f" as user {cluster.user}" if cluster.user else ""
    if not cluster.initialised:
        print(
            f"pgnotify: no PostgreSQL answers; creating a local cluster in .pgdata/{who}",
            file=sys.stderr,
        )
        cluster.init()
    if not cluster.running:
        print(
            f"pgnotify: starting the .pgdata/ cluster on 127.0.0.1:{DEV_PORT}{who}", file=sys.stderr
        )
        cluster.start()
    base = f"postgresql://postgres@127.0.0.1:{DEV_PORT}"
    return _ensure_database(f"{base}/postgres", base)


if __name__ == "__main__":
    print(dev_database_url(Path.cwd()))
