"""Daemons as real processes (``pgnotify run``), and what ``/proc`` says about them.

A benchmarked daemon runs as its own process, as in production: it has its own GIL and
its own core, and its RSS and CPU time can be read from ``/proc/<pid>`` without touching
it. Postgres CPU is read the same way, summed over every process of the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.devcluster import free_port

CLK_TCK = os.sysconf("SC_CLK_TCK")
# Warnings a healthy benchmark run emits on purpose (the outbox is the point of it).
EXPECTED_WARNINGS = frozenset({"outbox_mode"})


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process (``/proc/<pid>/stat``), 0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# Server processes that work for every database (WAL, checkpoints, vacuum scheduling).
_SHARED_PG = (
    "checkpointer",
    "background writer",
    "walwriter",
    "autovacuum launcher",
    "logical replication launcher",
    "stats collector",
    "-D ",
)


def postgres_pids(dbname: str) -> list[int]:
    """The server's processes working for ``dbname`` (backends, autovacuum workers) and
    those working for every database; other databases' backends are left out."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (entry / "comm").read_text().strip() not in ("postgres", "postmaster"):
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if dbname in cmdline or any(s in cmdline for s in _SHARED_PG):
                pids.append(int(entry.name))
    return pids


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (``/proc/stat``, idle and iowait out)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


@dataclass(frozen=True)
class CpuUse:
    """CPU seconds over one measured window, by whom; ``other`` is everything else on the
    machine (another workload would distort the figures, so it is reported)."""

    wall: float
    daemon: float
    postgres: float
    bench: float
    other: float

    def as_json(self, per: int) -> dict[str, float]:
        return {
            "daemon_us_per_item": round(self.daemon / per * 1e6, 1),
            "postgres_us_per_item": round(self.postgres / per * 1e6, 1),
            "bench_us_per_item": round(self.bench / per * 1e6, 1),
            "other_load_cores": round(self.other / self.wall, 2) if self.wall else 0.0,
        }


class CpuMeter:
    """CPU spent by the daemons, by this database's Postgres processes, by the benchmark
    itself and by the rest of the machine, between ``start`` and ``stop``."""

    def __init__(self, daemon_pids: list[int], dbname: str) -> None:
        self.daemon_pids = daemon_pids
        self.dbname = dbname
        self._t0 = 0.0
        self._daemon = 0.0
        self._pg: dict[int, float] = {}
        self._own = 0.0
        self._busy = 0.0

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._daemon = sum(cpu_seconds(p) for p in self.daemon_pids)
        self._pg = {p: cpu_seconds(p) for p in postgres_pids(self.dbname)}
        self._own = own_cpu_seconds()
        self._busy = machine_busy_seconds()

    def stop(self) -> CpuUse:
        """New backends count in full; ones that ended in between are lost (none should)."""
        daemon = sum(cpu_seconds(p) for p in self.daemon_pids) - self._daemon
        pg = sum(cpu_seconds(p) - self._pg.get(p, 0.0) for p in postgres_pids(self.dbname))
        own = own_cpu_seconds() - self._own
        busy = machine_busy_seconds() - self._busy
        return CpuUse(
            wall=time.monotonic() - self._t0,
            daemon=daemon,
            postgres=max(pg, 0.0),
            bench=own,
            other=max(busy - daemon - pg - own, 0.0),
        )


def memory_kib(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (peak RSS) of ``pid`` in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def daemon_env(settings: dict[str, Any]) -> dict[str, str]:
    """The process environment with our settings and none of the caller's pgnotify ones."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NOTIFICATION_", "SMTP_", "TWILIO_", "DATABASE_"))
    }
    for key, value in settings.items():
        env[key] = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
    # The pgnotify next to these benchmarks (a snapshot's copy), not the installed one.
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    return env


@dataclass
class DaemonProcess:
    """``python -m pgnotify.cli run`` with the given settings, its log in ``workdir``."""

    settings: dict[str, Any]
    workdir: Path
    name: str = "daemon"
    proc: subprocess.Popen[bytes] | None = None
    health_port: int = field(default_factory=free_port)

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, limit_s: float = 30.0) -> DaemonProcess:
        """Spawn it and wait until ``/health`` says ok (listener and pool up)."""
        self.proc = self._spawn()
        deadline = time.monotonic() + limit_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}: {self.log_tail()}"
                )
            if await asyncio.to_thread(self._healthy):
                return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not healthy after {limit_s}s: {self.log_tail()}")
            await asyncio.sleep(0.05)

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = daemon_env(
            {
                "NOTIFICATION_HEALTH_ADDR": f"127.0.0.1:{self.health_port}",
                "NOTIFICATION_LOG_FORMAT": "json",
                **self.settings,
            }
        )
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "pgnotify.cli", "run"],
                env=env,
                stdout=log,
                stderr=log,
                cwd=self.workdir,
            )

    def _healthy(self) -> bool:
        url = f"http://127.0.0.1:{self.health_port}/health"
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return bool(json.loads(response.read()).get("ok"))
        except (OSError, ValueError):
            return False

    async def stop(self, limit_s: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code (killed after ``limit_s``)."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(self.proc.wait, limit_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return await asyncio.to_thread(self.proc.wait, 10)

    def log_events(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far (anything else is kept as ``{"raw": line}``)."""
        events = []
        if self.log_path.exists():
            for line in self.log_path.read_text(errors="replace").splitlines():
                try:
                    events.append(json.loads(line))
                except ValueError:
                    events.append({"raw": line, "level": "raw"})
        return events

    def anomalies(self) -> dict[str, int]:
        """Warnings, errors and non-JSON lines (tracebacks) by event, minus expected ones."""
        counts: Counter[str] = Counter()
        for e in self.log_events():
            level = e.get("level")
            if level in ("warning", "error", "critical", "raw"):
                event = str(e.get("event", e.get("raw", "?")))[:80]
                if event not in EXPECTED_WARNINGS:
                    counts[f"{level}:{event}"] += 1
        return dict(counts)

    def log_tail(self, lines: int = 15) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
