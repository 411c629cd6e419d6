"""Run a benchmark against a copy of the source taken when it starts.

A run takes minutes and starts many ``pgnotify run`` processes, each importing pgnotify
afresh; someone editing ``pgnotify/`` or ``sql/`` meanwhile would make one run measure
several versions (and a migration of one version serve the code of another). So the
entry points copy ``pgnotify/``, ``sql/``, ``templates/``, ``benchmarks/`` and ``tests/``
to a temporary folder, record what they copied (commit, uncommitted files, a digest), and
run there; the results name the digest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SNAPSHOT_ENV = "PGNOTIFY_BENCH_SOURCE"  # set inside a snapshot: the source it was taken of
_COPIED = ("pgnotify", "sql", "templates", "benchmarks", "tests")


def inside_snapshot() -> bool:
    return SNAPSHOT_ENV in os.environ


def source_root() -> Path:
    """The repository the run was started from (where results are written)."""
    return Path(os.environ.get(SNAPSHOT_ENV) or REPO)


def _git(source: Path, *args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=source, capture_output=True, text=True, check=True
        ).stdout.rstrip("\n")
    except (OSError, subprocess.CalledProcessError):
        return ""


def describe(source: Path) -> dict[str, Any]:
    """Commit, uncommitted changes under pgnotify/ and sql/, and a digest of what runs."""
    digest = hashlib.sha256()
    for top in ("pgnotify", "sql", "templates"):
        for path in sorted((source / top).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(source)).encode())
                digest.update(path.read_bytes())
    status = _git(source, "status", "--porcelain", "pgnotify", "sql", "templates")
    return {
        "head": _git(source, "rev-parse", "HEAD"),
        "uncommitted": status.splitlines() if status else [],
        "source_digest": digest.hexdigest()[:16],
    }


def source_info() -> dict[str, Any]:
    """What this run measures (inside a snapshot: recorded when it was taken)."""
    recorded = os.environ.get(SNAPSHOT_ENV + "_INFO")
    return json.loads(recorded) if recorded else describe(REPO)


def run_in_snapshot(module: str, argv: list[str]) -> int:
    """Copy the source, run ``python -m module argv`` in the copy, remove the copy."""
    info = describe(REPO)
    with tempfile.TemporaryDirectory(prefix="pgnotify-bench-src-") as tmp:
        for top in _COPIED:
            shutil.copytree(
                REPO / top, Path(tmp) / top, ignore=shutil.ignore_patterns("__pycache__")
            )
        env = {**os.environ, SNAPSHOT_ENV: str(REPO), SNAPSHOT_ENV + "_INFO": json.dumps(info)}
        env.pop("PYTHONPATH", None)
        return subprocess.run([sys.executable, "-m", module, *argv], cwd=tmp, env=env).returncode
