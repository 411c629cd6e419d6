"""The wheel is what production installs: it must carry its SQL and templates.

The wheel is built from a copy of the source tree and installed into a fresh venv, with
``--no-deps``: its dependencies come from the test venv's site-packages through a ``.pth``
line (a plain path, so the test venv's editable pgnotify is *not* visible). Every command
then runs from an unrelated temporary directory, so nothing can be found through the
working directory or the checkout.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pgnotify import __version__
from tests.conftest import PgServer, with_dbname

# The module fixture builds a wheel and a fresh venv:
# minutes on a loaded machine, not the default 120 s.
pytestmark = pytest.mark.timeout(900)

ROOT = Path(__file__).resolve().parents[2]
_NOT_SOURCE = shutil.ignore_patterns(
    ".venv",
    ".git",
    ".pgdata",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    ".hypothesis",
    "outbox",
    "bench-results*.json",
)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed; returns its ``bin/`` folder."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=_NOT_SOURCE)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(work / "dist"), "."],
        cwd=source,
        check=True,
    )
    wheels = list((work / "dist").glob("pgnotify-*.whl"))
    assert len(wheels) == 1, wheels
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site) / "_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheels[0])],
        check=True,
    )
    return venv / "bin"


@pytest.fixture
def fresh_db(pg_server: PgServer) -> Iterator[str]:
    name = f"pgnotify_wheel_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server.admin_dsn, autocommit=True) as admin:
        admin.execute(f'create database "{name}"')
    try:
        yield with_dbname(pg_server.admin_dsn, name)
    finally:
        with psycopg.connect(pg_server.admin_dsn, autocommit=True) as admin:
            admin.execute(f'drop database if exists "{name}" with (force)')


def pgnotify(bin_dir: Path, cwd: Path, dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "DATABASE_URL": dsn, "HOME": str(cwd)}
    return subprocess.run(
        [str(bin_dir / "pgnotify"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_installed_wheel_migrates_renders_and_checks_from_any_directory(
    installed: Path, fresh_db: str, tmp_path: Path
) -> None:
    where = subprocess.run(
        [installed / "python", "-c", "import pgnotify; print(pgnotify.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(installed.parent) in where, where

    version = pgnotify(installed, tmp_path, fresh_db, "--version")
    assert version.stdout.strip() == f"pgnotify {__version__}"

    first = pgnotify(installed, tmp_path, fresh_db, "migrate")
    assert first.returncode == 0, first.stderr
    shipped = sorted(p.name for p in (ROOT / "sql").glob("[0-9][0-9][0-9]_*.sql"))
    assert first.stdout.split() == [word for name in shipped for word in ("applied", name)]
    again = pgnotify(installed, tmp_path, fresh_db, "migrate")
    assert (again.returncode, again.stdout.strip()) == (0, "database is up to date")

    demo = pgnotify(installed, tmp_path, fresh_db, "demo")
    assert demo.returncode == 0, demo.stderr
    booking = demo.stdout.split()[2]
    render = pgnotify(
        installed, tmp_path, fresh_db, "render", "booking_confirmed", "--booking", booking
    )
    assert render.returncode == 0, render.stderr
    assert "== email" in render.stdout and "== sms" in render.stdout
    assert "Demo Barbers" in render.stdout

    check = pgnotify(installed, tmp_path, fresh_db, "check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "OK templates" in check.stdout
    assert f"migrated ({len(shipped)} migrations)" in check.stdout


@pytest.mark.parametrize("folder", ["sql", "templates"])
def test_an_install_missing_its_sql_or_templates_fails_loudly(
    installed: Path, fresh_db: str, tmp_path: Path, folder: str
) -> None:
    package = Path(
        subprocess.run(
            [installed / "python", "-c", "import pgnotify; print(pgnotify.__file__)"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    ).parent
    assert package.is_relative_to(installed.parent), package
    aside = tmp_path / "aside"
    (package / folder).rename(aside)
    try:
        commands = ("migrate", "check") if folder == "sql" else ("check", "run", "render")
        for command in commands:
            args = [command]
            if command == "render":
                args += ["booking_confirmed", "--booking", str(uuid.uuid4())]
            result = pgnotify(installed, tmp_path, fresh_db, *args)
            assert result.returncode == 2, (command, result.stdout, result.stderr)
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and f"missing its {folder}/ folder" in lines[0], lines
            assert "Traceback" not in result.stderr
            if folder == "sql":
                assert "up to date" not in result.stdout
    finally:
        aside.rename(package / folder)
