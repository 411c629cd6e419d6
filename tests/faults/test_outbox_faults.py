"""The outbox cannot be written: a clear error on every row, no crash, delivery once fixed.

A real daemon in outbox mode (no SMTP, no Twilio) writes to a directory that is in turn
a regular file (ENOTDIR), a ``sms.jsonl`` that is ``/dev/full`` (ENOSPC on every write),
and a ``sms.jsonl`` that the process may not grow past a file-size limit (RLIMIT_FSIZE,
where a write is cut half-way: needs no mount and no privilege). The trigger of
``history.py`` records what each attempt ended with.
"""

from __future__ import annotations

import contextlib
import errno
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.daemon.harness import (
    count,
    count_reaches,
    daemon_env,
    env_for,
    make_settings,
    queue_burst,
    quiet_booking,
    running,
    stop_process,
    wait_until,
)
from tests.faults.history import Attempt, History

pytestmark = pytest.mark.faults

Conn = psycopg.Connection[Any]

ROWS = 4  # per channel


def outbox_settings(clean_db: str, outbox: Path) -> Any:
    # Many quick retries: the row must still be pending when the disk is fixed.
    return make_settings(
        clean_db, outbox, NOTIFICATION_RETRY_DELAYS=(0.2,), NOTIFICATION_MAX_RETRIES=50
    )


def queue_email_and_sms(db: Conn) -> tuple[list[int], list[int]]:
    booking = quiet_booking(db, with_user=False)
    return queue_burst(db, booking, ROWS, ("email",)), queue_burst(db, booking, ROWS, ("sms",))


def failed_attempts(history: History, ids: list[int]) -> dict[int, list[Attempt]]:
    return {
        i: [a for a in attempts if a.status == "pending"]
        for i, attempts in history.attempts(ids).items()
    }


def sms_lines(outbox: Path) -> list[dict[str, Any]]:
    """``sms.jsonl``, every line of which must be one whole JSON object."""
    return [json.loads(line) for line in (outbox / "sms.jsonl").read_text().splitlines()]


def assert_delivered_once(outbox: Path, emails: list[int], sms: list[int]) -> None:
    assert {p.name for p in outbox.glob("*.eml")} == {f"{i}.eml" for i in emails}
    assert not list(outbox.glob(".tmp-*")), "a failed write left its temporary file"
    written = [line["notification_id"] for line in sms_lines(outbox) if line.get("to")]
    assert sorted(written) == sorted(sms)


async def test_an_outbox_path_taken_by_a_file_fails_every_row_clearly_until_removed(
    db: Conn, clean_db: str, tmp_path: Path, history: History
) -> None:
    outbox = tmp_path / "outbox"
    outbox.write_text("an operator's stray file\n")
    emails, sms = queue_email_and_sms(db)
    async with running(outbox_settings(clean_db, outbox)) as daemon:
        await wait_until(lambda: history.failures_reach(emails + sms, 2), timeout=15)
        assert daemon.snapshot()["ok"], "an outbox fault is not a database fault"
        outbox.unlink()
        await count_reaches(clean_db, 2 * ROWS, "status = 'sent'", timeout=15)
    for row, failures in failed_attempts(history, emails + sms).items():
        target = f"{row}.eml" if row in emails else "sms.jsonl"
        for a in failures:
            assert a.error == (
                f"attempt {a.number} failed, retrying: outbox {outbox}/{target}:"
                f" Not a directory: {outbox} (errno {errno.ENOTDIR})"
            )
    assert_delivered_once(outbox, emails, sms)


async def test_an_sms_outbox_on_a_full_device_fails_every_sms_until_fixed(
    db: Conn, clean_db: str, tmp_path: Path, history: History
) -> None:
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    (outbox / "sms.jsonl").symlink_to("/dev/full")  # every write: ENOSPC
    emails, sms = queue_email_and_sms(db)
    async with running(outbox_settings(clean_db, outbox)):
        await wait_until(lambda: history.failures_reach(sms, 2), timeout=15)
        # The email files are another path: they went out meanwhile, at the first attempt.
        assert await count(clean_db, "id = any(%s) and status = 'sent'", (emails,)) == ROWS
        (outbox / "sms.jsonl").unlink()
        await count_reaches(clean_db, 2 * ROWS, "status = 'sent'", timeout=15)
    for failures in failed_attempts(history, sms).values():
        for a in failures:
            assert a.error == (
                f"attempt {a.number} failed, retrying: outbox {outbox}/sms.jsonl:"
                f" No space left on device (errno {errno.ENOSPC})"
            )
    assert_delivered_once(outbox, emails, sms)


# The daemon runs under a file-size limit (RLIMIT_FSIZE): a write that crosses it is cut
# at the limit and the next one fails with EFBIG. SIGXFSZ, which would kill the process,
# is ignored (as CPython does anyway), so the daemon sees the error. Set in a small
# launcher that then execs the daemon: limits and ignored signals survive exec, and no
# preexec_fn runs in a forked copy of the threaded test process.
FILE_SIZE_LIMIT = 1 << 20
LIMITED_DAEMON = f"""
import os, resource, signal, sys
resource.setrlimit(resource.RLIMIT_FSIZE, ({FILE_SIZE_LIMIT}, {FILE_SIZE_LIMIT}))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
os.execv(sys.executable, [sys.executable, "-m", "pgnotify.cli", "run"])
"""


@contextlib.contextmanager
def daemon_under_a_file_size_limit(
    clean_db: str, outbox: Path, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """``pgnotify run`` in its own process, unable to grow any file past 1 MiB; stopped
    with SIGTERM at the end of the block, where it must exit 0."""
    env = env_for(clean_db, outbox, NOTIFICATION_RETRY_DELAYS=(0.2,), NOTIFICATION_MAX_RETRIES=50)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", LIMITED_DAEMON],
            env=daemon_env(env),
            stdout=out,
            stderr=out,
            cwd=log.parent,
        )
    try:
        yield proc
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-3000:]
    finally:
        stop_process(proc)


async def test_a_write_cut_short_by_the_file_size_limit_is_rolled_back_and_retried(
    db: Conn, clean_db: str, tmp_path: Path, history: History
) -> None:
    """``sms.jsonl`` is 64 bytes short of the limit: every SMS line is written in part, the
    next write fails (EFBIG), and the fragment must be cut off again, so the file holds
    only whole lines. Once the operator rotates the file, every row is sent exactly once."""
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    earlier = json.dumps({"notification_id": 0, "note": ""}).encode()
    earlier = earlier[:-2] + b"x" * (FILE_SIZE_LIMIT - 64 - len(earlier) - 1) + b'"}\n'
    assert len(earlier) == FILE_SIZE_LIMIT - 64
    (outbox / "sms.jsonl").write_bytes(earlier)
    emails, sms = queue_email_and_sms(db)
    with daemon_under_a_file_size_limit(clean_db, outbox, tmp_path / "daemon.log"):
        await wait_until(lambda: history.failures_reach(sms, 3), timeout=30)
        # Emails are small files of their own: they went out at their first attempt.
        assert await count(clean_db, "id = any(%s) and status = 'sent'", (emails,)) == ROWS
        assert (outbox / "sms.jsonl").read_bytes() == earlier, "a partial line was left"
        (outbox / "sms.jsonl").rename(outbox / "sms.jsonl.1")  # the operator rotates it
        await count_reaches(clean_db, 2 * ROWS, "status = 'sent'", timeout=30)
    assert (outbox / "sms.jsonl.1").read_bytes() == earlier
    for failures in failed_attempts(history, sms).values():
        for a in failures:
            assert a.error == (
                f"attempt {a.number} failed, retrying: outbox {outbox}/sms.jsonl:"
                f" File too large (errno {errno.EFBIG})"
            )
    assert_delivered_once(outbox, emails, sms)
