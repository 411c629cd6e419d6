"""`pgnotify migrate`: ordered, once, locked, and clear about failures."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pgnotify.migrate import MigrationError, discover, migrate
from tests.conftest import PgServer, with_dbname


@pytest.fixture
def empty_db(pg_server: PgServer) -> Iterator[str]:
    name = f"pgnotify_mig_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server.admin_dsn, autocommit=True) as admin:
        admin.execute(f'create database "{name}"')
    try:
        yield with_dbname(pg_server.admin_dsn, name)
    finally:
        with psycopg.connect(pg_server.admin_dsn, autocommit=True) as admin:
            admin.execute(f'drop database if exists "{name}" with (force)')


def test_migrations_are_numbered_and_ordered() -> None:
    names = [m.name for m in discover()]
    assert names == sorted(names)
    assert names[0].startswith("001_")


def test_migrating_twice_is_a_no_op(empty_db: str) -> None:
    first = migrate(empty_db)
    assert first == [m.name for m in discover()]
    assert migrate(empty_db) == []
    with psycopg.connect(empty_db) as conn:
        (n,) = conn.execute("select count(*) from pgnotify.schema_migrations").fetchone() or (0,)
    assert n == len(first)


def test_concurrent_migrations_do_not_interleave(empty_db: str) -> None:
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(migrate(empty_db))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(len(r) for r in results) == [0, 0, len(discover())]


def test_an_edited_landed_migration_is_refused(empty_db: str, tmp_path: Path) -> None:
    (tmp_path / "001_a.sql").write_text("create table pgnotify.t1 (id int);")
    migrate(empty_db, tmp_path)
    (tmp_path / "001_a.sql").write_text("create table pgnotify.t1 (id bigint);")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        migrate(empty_db, tmp_path)


def test_a_failing_migration_rolls_back_and_names_the_file(empty_db: str, tmp_path: Path) -> None:
    (tmp_path / "001_ok.sql").write_text("create table pgnotify.t1 (id int);")
    (tmp_path / "002_bad.sql").write_text("create table pgnotify.t2 (id int); select 1/0;")
    with pytest.raises(MigrationError, match=r"002_bad\.sql"):
        migrate(empty_db, tmp_path)
    with psycopg.connect(empty_db) as conn:
        assert conn.execute("select to_regclass('pgnotify.t2')").fetchone() == (None,)
        versions = [r[0] for r in conn.execute("select version from pgnotify.schema_migrations")]
    assert versions == ["001"]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://nobody@127.0.0.1:1/x", "cannot connect to nobody@127.0.0.1:1/x"),
        ("not a url at all", "DATABASE_URL is not a valid libpq URL"),
    ],
)
def test_a_bad_database_url_is_one_line_and_exit_2(url: str, expected: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pgnotify.cli", "migrate"],
        env={"DATABASE_URL": url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
