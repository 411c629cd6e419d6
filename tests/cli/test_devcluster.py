"""Finding a Postgres: ``make run``, the tests and the benchmarks share ``find_server``.

``make run`` takes the configured database, else a server on 127.0.0.1:5432, else a
cluster it keeps under ``.pgdata/``; the tests and benchmarks take a named DSN first and
fall back to a throw-away cluster that is gone when they finish.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from tests import devcluster
from tests.conftest import PgServer


@pytest.fixture
def project_dir() -> Iterator[Path]:
    """A checkout-like directory the unprivileged postgres user can traverse."""
    path = Path(tempfile.mkdtemp(prefix="pgnotify-project-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def nothing_on_5432(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], bool]:
    """Pretend nothing listens on 5432, as on a fresh machine; other servers are real."""
    real_answers = devcluster.answers
    monkeypatch.setattr(
        devcluster, "answers", lambda dsn: ":5432/" not in dsn and real_answers(dsn)
    )
    return real_answers


def test_with_no_server_make_run_creates_and_reuses_a_pgdata_cluster(
    project_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    nothing_on_5432: Callable[[str], bool],
) -> None:
    """No DATABASE_URL and no server: a cluster is created under .pgdata/ with a pgnotify
    database, and the next `make run` reuses it, starting it when it was stopped."""
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.chdir(project_dir)  # no .env here
    monkeypatch.setattr(devcluster, "DEV_PORT", devcluster.free_port())
    url = devcluster.dev_database_url(project_dir)
    cluster = devcluster.LocalCluster(port=devcluster.DEV_PORT, base=project_dir / ".pgdata")
    try:
        assert f"a new local cluster in {project_dir / '.pgdata'}" in capsys.readouterr().err
        with psycopg.connect(url) as conn:
            assert conn.execute("select current_database()").fetchone() == ("pgnotify",)
        cluster.stop()
        assert devcluster.dev_database_url(project_dir) == url
        assert ".pgdata, started on 127.0.0.1:" in capsys.readouterr().err
    finally:
        cluster.stop("immediate")


def test_a_configured_database_url_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`make run` hands a configured DATABASE_URL through untouched, without a search."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", "postgresql://someone@db.example:5432/app")
    assert devcluster.dev_database_url(tmp_path) == "postgresql://someone@db.example:5432/app"


def test_the_named_dsn_is_used_first_when_it_answers(
    pg_server: PgServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DSN in the variable the caller names (PGNOTIFY_TEST_DSN, PGNOTIFY_BENCH_DSN)
    comes before every other way."""
    dsn = pg_server.admin_dsn + ("&" if "?" in pg_server.admin_dsn else "?")
    dsn += "application_name=named"
    monkeypatch.setenv("PGNOTIFY_SOME_DSN", dsn)
    with devcluster.find_server(dsn_env="PGNOTIFY_SOME_DSN", containers=False) as server:
        assert server == devcluster.Server(dsn, "PGNOTIFY_SOME_DSN")


def test_a_named_dsn_that_does_not_answer_is_passed_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A named DSN nobody listens on does not stop the search: the next way serves."""
    dead = f"postgresql://postgres@127.0.0.1:{devcluster.free_port()}/postgres"
    monkeypatch.setenv("PGNOTIFY_SOME_DSN", dead)
    with devcluster.find_server(dsn_env="PGNOTIFY_SOME_DSN", containers=False) as server:
        assert server.admin_dsn != dead
        assert devcluster.answers(server.admin_dsn)


def test_with_nothing_else_a_throw_away_cluster_serves_and_is_gone_afterwards(
    nothing_on_5432: Callable[[str], bool],
) -> None:
    """No named DSN, no server and no containers: a cluster of the machine's initdb
    serves the block and is stopped and removed when it ends."""
    with devcluster.find_server(containers=False) as server:
        assert server.how.startswith("a throw-away cluster on 127.0.0.1:")
        assert nothing_on_5432(server.admin_dsn)
    assert not nothing_on_5432(server.admin_dsn)


def test_a_fresh_database_is_migrated_and_dropped_afterwards(pg_server: PgServer) -> None:
    """``fresh_database`` gives a database of its own with pgnotify's schema (or none,
    when asked), and drops it when the block ends."""
    admin = pg_server.admin_dsn
    with devcluster.fresh_database(admin, prefix="pgnotify_fresh") as migrated:
        with psycopg.connect(migrated) as conn:
            row = conn.execute("select to_regclass('pgnotify.notifications')").fetchone()
            assert row is not None and row[0] is not None
        with (
            devcluster.fresh_database(admin, prefix="pgnotify_fresh", migrated=False) as empty,
            psycopg.connect(empty) as conn,
        ):
            assert conn.execute("select to_regnamespace('pgnotify')").fetchone() == (None,)
    names = {conninfo_to_dict(d)["dbname"] for d in (migrated, empty)}
    with psycopg.connect(admin) as conn:
        left = conn.execute(
            "select datname from pg_database where datname = any(%s)", (list(names),)
        ).fetchall()
    assert left == []
