"""The shipped unit file verifies and is hardened (when systemd-analyze is present)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "pgnotify.service"

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


@pytest.fixture
def unit_here(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's executable, so verify can stat it."""
    exe = Path(sys.executable).with_name("pgnotify")
    text = UNIT.read_text().replace("/opt/pgnotify/venv/bin/pgnotify", str(exe))
    path = tmp_path / "pgnotify.service"
    path.write_text(text)
    return path


def test_the_unit_declares_what_the_daemon_relies_on() -> None:
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=30",
        "Restart=on-failure",
        "EnvironmentFile=/etc/pgnotify/pgnotify.env",
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter=@system-service",
        "CapabilityBoundingSet=\n",
    ):
        assert line in text, line
    assert re.search(r"^LoadCredential=DATABASE_URL:", text, re.M)


@needs_analyze
def test_systemd_analyze_verify_passes(unit_here: Path) -> None:
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(unit_here)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "pgnotify.service" not in proc.stderr, proc.stderr


@needs_analyze
def test_systemd_analyze_security_rates_it_1_2_as_the_readme_says(unit_here: Path) -> None:
    """README: the hardening set makes ``systemd-analyze security`` rate the unit 1.2."""
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit_here)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout + proc.stderr)
    assert match, proc.stdout + proc.stderr
    assert float(match.group(1)) <= 1.2, match.group(0)
