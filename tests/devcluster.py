"""Find or start a PostgreSQL for development: ``make run``, the tests, the benchmarks.

Developer tooling, so it lives beside the tests and is not in the wheel: production runs
against the operator's own Postgres and never needs ``initdb``, Docker or testcontainers.

``find_server`` is the one search all three use (a configured DSN, a server on
127.0.0.1:5432, testcontainers, then a cluster of the machine's own ``initdb``/``pg_ctl``),
and ``fresh_database`` the one way they make a database of their own and drop it.
``make run`` keeps its cluster under ``.pgdata/``; the tests and benchmarks make
throw-away ones (the fault tests also to restart or stop Postgres under a daemon, never
the shared server). Postgres refuses to run as root, so as root a cluster is owned by and
run as an unprivileged user (``postgres`` if it exists, else ``nobody``).

``python -m tests.devcluster`` prints a ``DATABASE_URL`` for ``make run``: the one
configured, else the ``pgnotify`` database on the server ``find_server`` finds.
"""

from __future__ import annotations

import contextlib
import getpass
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgnotify.db import as_url
from pgnotify.migrate import migrate
from pgnotify.settings import load_settings


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

    def restart(self) -> None:
        """Stop and start again (the fault tests restart Postgres under a daemon)."""
        self.stop()
        self.start()

    def stop(self, mode: str = "fast") -> None:
        assert self.pg_ctl
        self._run(self.pg_ctl, "-D", str(self.datadir), "-m", mode, "-w", "stop", check=False)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)


DEV_PORT = 54329  # the port of make run's .pgdata/ cluster


@dataclass(frozen=True)
class Server:
    """A PostgreSQL server to create databases on: a superuser's DSN, and how it was found."""

    admin_dsn: str
    how: str


class NoServer(RuntimeError):
    """No PostgreSQL could be found or started; the message says what was tried."""


def answers(dsn: str) -> bool:
    """True when a PostgreSQL server accepts this DSN and answers a query."""
    try:
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            conn.execute("select 1")
        return True
    except psycopg.Error:
        return False


def _docker_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]  # docker ships no type information

        docker.from_env(timeout=3).ping()
        return True
    except Exception:  # no package, no socket, no engine: all mean "no Docker here"
        return False


def _local_cluster(stack: contextlib.ExitStack, base: Path | None, port: int | None) -> Server:
    """The cluster in ``base`` (created and started as needed, left running), or with no
    ``base`` a throw-away one that is destroyed when ``stack`` closes."""
    cluster = LocalCluster(port=port, base=base)
    where = f"127.0.0.1:{cluster.port}" + (f" as user {cluster.user}" if cluster.user else "")
    if base is None:
        stack.callback(cluster.destroy)
        cluster.init().start()
        return Server(cluster.dsn, f"a throw-away cluster on {where} (fsync=off)")
    if not cluster.initialised:
        cluster.init()
        cluster.start()
        return Server(cluster.dsn, f"a new local cluster in {base} on {where}")
    if cluster.running:
        return Server(cluster.dsn, f"the local cluster in {base} on {where}")
    cluster.start()
    return Server(cluster.dsn, f"the local cluster in {base}, started on {where}")


@contextlib.contextmanager
def find_server(
    *,
    dsn_env: str | None = None,
    containers: bool = True,
    cluster_dir: Path | None = None,
    cluster_port: int | None = None,
) -> Iterator[Server]:
    """The first PostgreSQL that answers, in this order; anything started for it is
    stopped when the ``with`` block ends, except a cluster kept in ``cluster_dir``.

    1. the DSN in the environment variable ``dsn_env``, when it is set (passed over, and
       said so, when it does not answer);
    2. a server on 127.0.0.1:5432, as ``$PGUSER``, the login user or ``postgres``;
    3. with ``containers``, testcontainers' PostgreSQL when a Docker engine answers;
    4. a cluster of the machine's ``initdb``/``pg_ctl``: the one kept in ``cluster_dir``
       (on ``cluster_port``), else a throw-away one.

    Raises ``NoServer`` naming everything tried. The tests, the benchmarks and ``make run``
    (which keeps ``.pgdata/`` and wants no container that dies with this process) all
    search through here.
    """
    with contextlib.ExitStack() as stack:
        yield _search(stack, dsn_env, containers, cluster_dir, cluster_port)


def _search(
    stack: contextlib.ExitStack,
    dsn_env: str | None,
    containers: bool,
    cluster_dir: Path | None,
    cluster_port: int | None,
) -> Server:
    tried: list[str] = []
    if dsn_env is not None:
        dsn = os.environ.get(dsn_env)
        if dsn and answers(dsn):
            return Server(dsn, dsn_env)
        tried.append(f"{dsn_env} ({'did not answer' if dsn else 'unset'})")
    for user in dict.fromkeys([os.environ.get("PGUSER") or "", getpass.getuser(), "postgres"]):
        if user and answers(local := f"postgresql://{user}@127.0.0.1:5432/postgres"):
            return Server(local, f"the server on 127.0.0.1:5432 as {user}")
    tried.append("127.0.0.1:5432 (no answer)")
    if containers:
        if _docker_answers():
            try:
                from testcontainers.postgres import PostgresContainer

                container = stack.enter_context(
                    PostgresContainer("postgres:16-alpine", driver=None)
                )
                return Server(container.get_connection_url(), "testcontainers")
            except Exception as exc:  # an image pull or start failure: try the next way
                tried.append(f"testcontainers ({exc})")
        else:
            tried.append("testcontainers (no Docker engine)")
    try:
        return _local_cluster(stack, cluster_dir, cluster_port)
    except (OSError, RuntimeError) as exc:
        tried.append(f"local initdb/pg_ctl ({exc})")
    raise NoServer("no PostgreSQL found; tried: " + "; ".join(tried))


def with_dbname(dsn: str, dbname: str) -> str:
    """The same connection string, naming another database."""
    params = conninfo_to_dict(dsn)
    params["dbname"] = dbname
    return make_conninfo("", **params)


@contextlib.contextmanager
def fresh_database(
    admin_dsn: str, *, prefix: str, migrated: bool = True, keep: bool = False
) -> Iterator[str]:
    """A new database named ``prefix_<pid>_<random>`` on ``admin_dsn``'s server, migrated
    unless ``migrated`` is false; its DSN. Dropped (with its connections) afterwards,
    unless ``keep``."""
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f'create database "{name}"')
    try:
        dsn = with_dbname(admin_dsn, name)
        if migrated:
            migrate(dsn)
        yield dsn
    finally:
        if not keep:
            with psycopg.connect(admin_dsn, autocommit=True) as admin:
                admin.execute(f'drop database if exists "{name}" with (force)')


def _ensure_database(admin_dsn: str, name: str = "pgnotify") -> str:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        if not conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone():
            conn.execute(f'create database "{name}"')
    return as_url(with_dbname(admin_dsn, name))


def dev_database_url(project_dir: Path) -> str:
    """DATABASE_URL if configured; else the ``pgnotify`` database (created if missing) on
    the first server ``find_server`` finds, keeping a cluster in ``.pgdata/``."""
    settings = load_settings()
    if "DATABASE_URL" in settings.model_fields_set:
        print("pgnotify: using DATABASE_URL", file=sys.stderr)
        return settings.database_url
    with find_server(
        containers=False, cluster_dir=project_dir / ".pgdata", cluster_port=DEV_PORT
    ) as server:
        print(f"pgnotify: using {server.how}", file=sys.stderr)
        return _ensure_database(server.admin_dsn)


if __name__ == "__main__":
    print(dev_database_url(Path.cwd()))
