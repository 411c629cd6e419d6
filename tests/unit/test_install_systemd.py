"""``make install-systemd`` installs what production runs, and nothing a developer needs.

The target runs for real, into a temporary ``DESTDIR`` with ``SYSTEMCTL=true`` (this
machine has no systemd as PID 1) and under ``umask 077``, as in a hardened root shell: it
builds the wheel, creates the venv, installs the unit and the example settings. One
install serves the module; the last test re-installs over it and then uninstalls.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from pgnotify import __version__

# The module fixture builds a wheel and a venv with its dependencies from the index:
# minutes on a loaded machine, not the default 120 s.
pytestmark = pytest.mark.timeout(900)

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "pgnotify.service"
ENV_EXAMPLE = ROOT / "systemd" / "pgnotify.env.example"
VENV = Path("opt/pgnotify/venv")
INSTALLED_UNIT = Path("etc/systemd/system/pgnotify.service")
ETC = Path("etc/pgnotify")
# No systemd here; and the venv on the Python running this test (make's python3 may be older).
MAKE_VARIABLES = ("SYSTEMCTL=true", f"PYTHON={sys.executable}")
LIST_DISTRIBUTIONS = "import importlib.metadata as m; print(*(d.name for d in m.distributions()))"


@dataclass(frozen=True)
class Staged:
    """The temporary root the target installed into, and what the target printed."""

    root: Path
    output: str

    def __truediv__(self, relative: Path | str) -> Path:
        return self.root / relative


def clean_env() -> dict[str, str]:
    """This process's environment minus what would leak into the install or its venv."""
    leaks = ("PYTHONPATH", "VIRTUAL_ENV", "PREFIX", "DESTDIR", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")
    return {k: v for k, v in os.environ.items() if k not in leaks}


def make(target: str, root: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["make", "-C", str(ROOT), target, f"DESTDIR={root}", *MAKE_VARIABLES],
        env=clean_env(),
        umask=0o077,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Staged:
    root = tmp_path_factory.mktemp("install-systemd") / "root"
    return Staged(root, make("install-systemd", root).stdout)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o7777


def distributions(staged: Staged) -> set[str]:
    """Normalised names of every distribution installed in the staged venv."""
    listing = subprocess.run(
        [staged / VENV / "bin" / "python", "-c", LIST_DISTRIBUTIONS],
        env=clean_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {re.sub(r"[-_.]+", "-", name).lower() for name in listing.split()}


def requirement_names(requirements: list[str]) -> set[str]:
    return {
        re.sub(r"[-_.]+", "-", re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0]).lower()
        for r in requirements
    }


def test_the_venv_runs_pgnotify_with_its_runtime_dependencies_and_no_dev_tools(
    staged: Staged,
) -> None:
    """The wheel is installed without the ``test``/``dev`` extras, and its command works."""
    version = subprocess.run(
        [staged / VENV / "bin" / "pgnotify", "--version"],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert version.stdout.strip() == f"pgnotify {__version__}", version.stderr

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = requirement_names(project["dependencies"])
    extras = set().union(*(requirement_names(r) for r in project["optional-dependencies"].values()))
    extras -= {"pgnotify"} | runtime
    installed = distributions(staged)
    assert runtime <= installed, runtime - installed
    assert not extras & installed, f"dev/test tools in the production venv: {extras & installed}"


def test_files_have_the_modes_the_service_and_its_secrets_need(staged: Staged) -> None:
    """Even under umask 077 the dynamic user can read the venv; settings and secrets are not
    world-readable; the installed unit is the shipped one."""
    package = next((staged / VENV / "lib").glob("python3*/site-packages/pgnotify"))
    for path in (staged / VENV / "bin" / "pgnotify", staged / VENV / "bin" / "python"):
        assert os.access(path, os.X_OK) and mode(path.resolve()) & 0o005 == 0o005, path
    for path in (package / "cli.py", next((package / "sql").glob("*.sql"))):
        assert mode(path) & 0o004, f"{path} is not readable by the service's dynamic user"
    assert mode(package) & 0o005 == 0o005

    assert mode(staged / INSTALLED_UNIT) == 0o644
    assert (staged / INSTALLED_UNIT).read_text() == UNIT.read_text()
    assert mode(staged / ETC / "credentials") == 0o700
    assert mode(staged / ETC / "pgnotify.env") == 0o640
    assert (staged / ETC / "pgnotify.env").read_text() == ENV_EXAMPLE.read_text()
    assert (staged / "opt/pgnotify/README.md").is_file()  # the unit's Documentation=


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verify_accepts_the_installed_unit(staged: Staged, tmp_path: Path) -> None:
    """The unit as installed verifies, its ExecStart being the staged venv's ``pgnotify``."""
    text = (staged / INSTALLED_UNIT).read_text()
    exec_start = "ExecStart=/opt/pgnotify/venv/bin/pgnotify run"
    assert exec_start in text
    unit = tmp_path / "pgnotify.service"
    unit.write_text(text.replace("/opt/pgnotify/venv", str(staged / VENV)))
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "pgnotify.service" not in proc.stderr, proc.stderr


def test_the_example_settings_enable_no_provider(staged: Staged, tmp_path: Path) -> None:
    """No SMTP or Twilio line is active, and the installed ``pgnotify check``, given the file
    as ``sh`` reads it (the README's ``pgn``), reports both channels in outbox mode."""
    env_file = staged / ETC / "pgnotify.env"
    active = [
        line for line in env_file.read_text().splitlines() if line and not line.startswith("#")
    ]
    assert active, "the example sets the daemon's defaults"
    assert not [line for line in active if re.match(r"(SMTP_|TWILIO_|DATABASE_URL=)", line)]

    env = clean_env() | {"DATABASE_URL": "postgresql://127.0.0.1:1/nothing"}
    proc = subprocess.run(
        ["sh", "-ac", f'. "{env_file}"; exec "{staged / VENV}/bin/pgnotify" check'],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "OK settings: valid" in proc.stdout, proc.stdout + proc.stderr
    assert "OK email: outbox mode (SMTP_SERVER unset)" in proc.stdout, proc.stdout
    assert "OK sms: outbox mode (TWILIO_ACCOUNT_SID unset)" in proc.stdout, proc.stdout


def test_the_target_prints_the_steps_that_follow(staged: Staged) -> None:
    """Migrate as owner, the login role, the credential, the drop-in, then enable."""
    out = staged.output
    assert f"pgnotify {__version__} is in /opt/pgnotify/venv" in out
    steps = [
        "/opt/pgnotify/venv/bin/pgnotify migrate",
        "in role pgnotify_daemon",
        "/etc/pgnotify/credentials/DATABASE_URL",
        "systemctl edit pgnotify",
        "LoadCredential=SMTP_PASSWORD:/etc/pgnotify/credentials/SMTP_PASSWORD",
        "systemctl enable --now pgnotify",
    ]
    where = [out.find(step) for step in steps]
    assert -1 not in where, [s for s, w in zip(steps, where, strict=True) if w == -1]
    assert where == sorted(where), "the steps are printed out of order"


def test_reinstalling_keeps_the_settings_and_uninstalling_keeps_etc(staged: Staged) -> None:
    """Runs last: a second install restores a damaged package of the same version and
    leaves an edited env file alone; uninstalling removes the unit and the venv only."""
    env_file = staged / ETC / "pgnotify.env"
    env_file.write_text("SMTP_SERVER=relay.internal\n")
    migrations = next((staged / VENV / "lib").glob("python3*/site-packages/pgnotify/sql"))
    baseline = next(migrations.glob("001_*.sql"))
    baseline.unlink()

    make("install-systemd", staged.root)
    assert env_file.read_text() == "SMTP_SERVER=relay.internal\n"
    assert baseline.is_file(), "the second install did not replace pgnotify"

    make("uninstall-systemd", staged.root)
    assert not (staged / INSTALLED_UNIT).exists()
    assert not (staged / VENV).exists()
    assert not (staged / "opt/pgnotify").exists()
    assert env_file.read_text() == "SMTP_SERVER=relay.internal\n"
    assert mode(staged / ETC / "credentials") == 0o700
