"""`make run` finds a Postgres: the configured one, a local server, else its own cluster."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pgnotify import devcluster


@pytest.fixture
def project_dir() -> Iterator[Path]:
    """A checkout-like directory the unprivileged postgres user can traverse."""
    path = Path(tempfile.mkdtemp(prefix="pgnotify-project-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_with_no_server_make_run_creates_and_reuses_a_pgdata_cluster(
    project_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tmp_path = project_dir
    real_answers = devcluster.answers
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)  # no .env here
    # Pretend nothing listens on 5432, as on a fresh machine; the new cluster is real.
    monkeypatch.setattr(
        devcluster, "answers", lambda dsn: ":5432/" not in dsn and real_answers(dsn)
    )
    monkeypatch.setattr(devcluster, "DEV_PORT", devcluster.free_port())
    url = devcluster.dev_database_url(tmp_path)
    cluster = devcluster.LocalCluster(port=devcluster.DEV_PORT, base=tmp_path / ".pgdata")
    try:
        assert "creating a local cluster in .pgdata/" in capsys.readouterr().err
        with psycopg.connect(url) as conn:
            assert conn.execute("select current_database()").fetchone() == ("pgnotify",)
        # A second `make run` reuses it, running or stopped.
        cluster.stop()
        assert devcluster.dev_database_url(tmp_path) == url
        assert "starting the .pgdata/ cluster" in capsys.readouterr().err
    finally:
        cluster.stop("immediate")


def test_a_configured_database_url_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", "postgresql://someone@db.example:5432/app")
    assert devcluster.dev_database_url(tmp_path) == "postgresql://someone@db.example:5432/app"
