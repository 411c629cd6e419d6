"""Run real daemons for tests: in-process (a task on the test loop) or as subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from email.parser import BytesParser
from email.policy import compat32
from pathlib import Path
from typing import Any

import psycopg

from pgnotify.daemon import Daemon
from pgnotify.settings import Settings
from tests.factories import make_booking, make_world
from tests.peers.smtp import SmtpPeer
from tests.peers.twilio import TwilioPeer

FAST = {
    "NOTIFICATION_POLL_INTERVAL": 60.0,
    "NOTIFICATION_RETRY_DELAYS": (0.3, 0.6, 0.9),
    "NOTIFICATION_SEND_TIMEOUT": 2.0,
    "NOTIFICATION_LEASE_SECONDS": 4.0,
    "NOTIFICATION_SHUTDOWN_GRACE": 5.0,
    "NOTIFICATION_PROBE_INTERVAL": 0.5,
    "NOTIFICATION_DB_TIMEOUT": 3.0,
    "NOTIFICATION_HEALTH_ADDR": "127.0.0.1:0",
    "NOTIFICATION_LOG_FORMAT": "json",
}


def smtp_settings(peer: SmtpPeer) -> dict[str, Any]:
    """Settings that send email to a test SMTP peer (plain SMTP, no AUTH)."""
    return {"SMTP_SERVER": peer.host, "SMTP_PORT": peer.port, "SMTP_SECURITY": "none"}


def twilio_settings(peer: TwilioPeer) -> dict[str, Any]:
    """Settings that send SMS to a test Twilio-shaped peer."""
    return {
        "TWILIO_ACCOUNT_SID": peer.account_sid,
        "TWILIO_AUTH_TOKEN": peer.auth_token,
        "TWILIO_PHONE_NUMBER": "+15550001111",
        "TWILIO_API_URL": peer.base_url,
    }


def make_settings(database_url: str, outbox: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        **FAST,
        "DATABASE_URL": database_url,
        "NOTIFICATION_OUTBOX_DIR": outbox,
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@asynccontextmanager
async def running(settings: Settings, *, expect_exit: int = 0) -> AsyncIterator[Daemon]:
    """A daemon on the test's loop, ready (listening, every loop running) when the block starts.

    The daemon's end is part of every test that uses it: after the block, ``Daemon.run``
    must return ``expect_exit``. With the default 0 the daemon must run until the block
    ends and then stop cleanly; if it stops by itself meanwhile (a core loop died: exit
    1), the block is interrupted at once and the test fails with the exit code, instead
    of waiting out its own timeouts or passing on work done before the death. A test
    that kills a loop on purpose passes ``expect_exit=1`` and waits for the stop itself.
    """
    daemon = Daemon(settings)
    task = asyncio.create_task(daemon.run(install_signals=False), name="daemon-under-test")
    deadline = time.monotonic() + 15
    # Ready: listening, and every loop (workers, scheduler, maintenance) running.
    while not (daemon.ready.is_set() and daemon.listener.connected) and not task.done():
        assert time.monotonic() < deadline, "daemon did not become ready"
        await asyncio.sleep(0.01)
    if task.done():
        raise AssertionError(f"the daemon ended before it listened: exit {task.result()}")

    test_task = asyncio.current_task()
    assert test_task is not None
    interrupted = False
    in_block = True

    def interrupt_the_block(_: asyncio.Task[int]) -> None:
        # Runs when the daemon's task ends. Only the harness stops a healthy daemon,
        # and only after the block: ending earlier is a failure the test must see now.
        nonlocal interrupted
        if in_block and expect_exit == 0:
            interrupted = True
            test_task.cancel()

    task.add_done_callback(interrupt_the_block)
    try:
        yield daemon
    except asyncio.CancelledError:
        if not interrupted:
            raise
        test_task.uncancel()  # our own cancellation: it becomes the failure below
    finally:
        in_block = False
        ended_by_itself = task.done()
        daemon.stop()
        code = await asyncio.wait_for(task, 30)  # a crash of run() itself propagates
    if ended_by_itself and expect_exit == 0:
        raise AssertionError(
            f"the daemon stopped by itself during the test with exit code {code}"
            " (a core loop died: see its task_died log line)"
        )
    assert code == expect_exit, f"the daemon exited {code}, expected {expect_exit}"


async def wait_until(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02
) -> Any:
    """Poll an async or sync predicate until it returns a truthy value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value {value!r})")
        await asyncio.sleep(interval)


async def count(dsn: str, where: str = "true", params: tuple[Any, ...] = ()) -> int:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            f"select count(*) from pgnotify.notifications where {where}",
            params,
        )
        row = await cur.fetchone()
        return int(row[0]) if row else 0


def daemon_env(settings_env: dict[str, str]) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("NOTIFICATION_", "SMTP_", "TWILIO_"))
    }
    env.update({k: str(v) for k, v in settings_env.items()})
    return env


def spawn(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``pgnotify run`` as a real process (for signals and kill -9)."""
    out = log.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "pgnotify.cli", "run"],
        env=daemon_env(env),
        stdout=out,
        stderr=out,
        cwd=log.parent,
    )


def env_for(database_url: str, outbox: Path, **overrides: Any) -> dict[str, str]:
    values = {**FAST, "DATABASE_URL": database_url, "NOTIFICATION_OUTBOX_DIR": outbox, **overrides}
    out = {}
    for k, v in values.items():
        out[k] = ",".join(str(x) for x in v) if isinstance(v, tuple) else str(v)
    return out


async def next_notify(conn: psycopg.AsyncConnection[Any], timeout: float) -> psycopg.Notify:
    """The next NOTIFY on a listening connection; the generator is closed either way."""
    async with contextlib.aclosing(conn.notifies(timeout=timeout, stop_after=1)) as gen:
        async for note in gen:
            return note
    raise AssertionError(f"no notification within {timeout}s")


async def count_reaches(dsn: str, n: int, where: str, timeout: float = 10.0) -> None:
    """Wait until exactly ``n`` notifications match ``where``."""

    async def reached() -> bool:
        return await count(dsn, where) == n

    await wait_until(reached, timeout=timeout)


def queue_burst(
    conn: psycopg.Connection[Any],
    booking_id: Any,
    n: int,
    channels: tuple[str, ...] = ("email",),
) -> list[int]:
    """Queue ``n`` manual ``booking_confirmed`` notifications per channel, in one statement.

    They go through ``pgnotify.enqueue`` (the function the triggers use), each its own
    occurrence, due now; returns the new ids.
    """
    rows = conn.execute(
        "select pgnotify.enqueue(array(select row(%s, null, 'booking_confirmed',"
        " 'burst:' || gen_random_uuid(), now())::pgnotify.event"
        " from generate_series(1, %s)), %s, true)",
        (booking_id, n, list(channels)),
    ).fetchall()
    return [int(r[0]) for r in rows]


async def get_health(port: int, timeout: float = 2.0) -> tuple[int, dict[str, Any]]:
    """``GET /health`` on 127.0.0.1: the status code and the JSON body."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            raw = await reader.read()
        finally:
            writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


async def health_becomes(port: int, status: int, timeout: float = 15.0) -> dict[str, Any]:
    """Wait until the health socket answers ``status``; returns that answer's body."""

    async def answered() -> dict[str, Any] | None:
        try:
            code, body = await get_health(port)
        except (OSError, TimeoutError, ValueError, IndexError):
            return None
        return body if code == status else None

    body: dict[str, Any] = await wait_until(answered, timeout=timeout, interval=0.05)
    return body


def message_id_counts(messages: list[Any]) -> Counter[str]:
    """How many times the SMTP peer received each Message-ID."""
    parser = BytesParser(policy=compat32)
    return Counter(str(parser.parsebytes(m.data, headersonly=True)["Message-ID"]) for m in messages)


def logged(log: Path, event: str | None = None) -> list[dict[str, Any]]:
    """The JSON log lines of a spawned daemon (those of one ``event``), in order."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and event in (None, entry.get("event")):
                found.append(entry)
    return found


def logged_at(entry: dict[str, Any]) -> float:
    """The wall-clock time (``time.time()`` scale) of a JSON log line."""
    return datetime.fromisoformat(entry["timestamp"]).timestamp()


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Make sure a spawned daemon is gone (a test that failed half-way may leave one)."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


def quiet_booking(conn: psycopg.Connection[Any], **world: Any) -> Any:
    """A booking whose own automatic notifications are out of the way (cancelled)."""
    booking = make_booking(conn, make_world(conn, **world))
    conn.execute(
        "update pgnotify.notifications set status = 'cancelled' where booking_id = %s", (booking,)
    )
    return booking


# A daemon sized for burst tests: 3 workers x 20, short lease and send timeout.
WORKERS = 3
BATCH = 20


def burst_env(clean_db: str, tmp_path: Path, smtp: Any, **overrides: Any) -> dict[str, str]:
    """Environment of a spawned daemon sending a burst of email to the SMTP peer ``smtp``."""
    values: dict[str, Any] = {
        "SMTP_SERVER": smtp.host,
        "SMTP_PORT": smtp.port,
        "SMTP_SECURITY": "none",
        "NOTIFICATION_WORKERS": WORKERS,
        "NOTIFICATION_BATCH_SIZE": BATCH,
        "NOTIFICATION_LEASE_SECONDS": 3,
        "NOTIFICATION_SEND_TIMEOUT": 1,
        "NOTIFICATION_HEALTH_ADDR": "",
    }
    return env_for(clean_db, tmp_path / "outbox", **{**values, **overrides})


def states(db: psycopg.Connection[Any], ids: list[int]) -> dict[int, tuple[str, int, str | None]]:
    """Each notification's (status, attempts, provider_id), by id."""
    rows = db.execute(
        "select id, status, attempts, provider_id from pgnotify.notifications where id = any(%s)",
        (ids,),
    ).fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}
