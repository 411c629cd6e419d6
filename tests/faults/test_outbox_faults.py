"""The outbox cannot be written: a clear error on every row, no crash, delivery once fixed.

A real daemon in outbox mode (no SMTP, no Twilio) writes to a directory that is in turn
a regular file (ENOTDIR), a ``sms.jsonl`` that is ``/dev/full`` (ENOSPC on every write),
and a real, full filesystem (a tiny tmpfs, where a write can be cut half-way). The
trigger of ``history.py`` records what each attempt ended with.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.daemon.harness import (
    count,
    count_reaches,
    make_settings,
    queue_burst,
    quiet_booking,
    running,
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


@pytest.fixture
def full_filesystem(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A 64 KiB tmpfs holding ``sms.jsonl`` (one line, most of a page) and a filler file
    that takes every other page: the next SMS line fits only in part.

    Needs the right to mount (root with CAP_SYS_ADMIN); skipped where it is refused.
    """
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip() or mounted.returncode}")
    try:
        earlier = json.dumps({"notification_id": 0, "note": "x" * 3950})
        (disk / "sms.jsonl").write_text(earlier + "\n")
        filler = disk / "filler"
        with filler.open("wb", buffering=0) as fh, contextlib.suppress(OSError):
            while True:
                fh.write(b"\0" * 4096)
        yield disk, filler
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=False)


async def test_a_full_filesystem_fails_every_row_and_leaves_no_half_line_behind(
    db: Conn, clean_db: str, full_filesystem: tuple[Path, Path], history: History
) -> None:
    outbox, filler = full_filesystem
    emails, sms = queue_email_and_sms(db)
    async with running(outbox_settings(clean_db, outbox)):
        await wait_until(lambda: history.failures_reach(emails + sms, 2), timeout=15)
        # Nothing went half-way into the file: it is still exactly the earlier line.
        assert [line["notification_id"] for line in sms_lines(outbox)] == [0]
        os.unlink(filler)
        await count_reaches(clean_db, 2 * ROWS, "status = 'sent'", timeout=15)
    for failures in failed_attempts(history, emails + sms).values():
        assert all(
            f"No space left on device (errno {errno.ENOSPC})" in str(a.error) for a in failures
        )
    assert_delivered_once(outbox, emails, sms)
