"""The outbox keeps personal data private: folders it creates are 0700, files 0600.

Whatever the daemon's umask (0000 under a careless unit, 0022 by default, 0277 taking even
the owner's write bit), what the outbox creates is readable by its owner only. A folder
the operator created beforehand keeps the permissions the operator gave it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgnotify.channels.base import EmailMessage, SmsMessage
from pgnotify.channels.outbox import OutboxEmailChannel, OutboxSmsChannel
from pgnotify.settings import load_settings

EMAIL = EmailMessage(
    notification_id=41,
    to_address="maria@example.com",
    to_name="María",
    from_name="Studio Nine",
    reply_to=None,
    subject="Reserva confirmada",
    text="Hola\n",
    html="<p>Hola</p>\n",
    message_id="<pgnotify.41@pgnotify.example>",
)
SMS = SmsMessage(42, "+34600111222", "Studio Nine: your Haircut is confirmed.")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o000, 0o022, 0o277], ids=["umask-0000", "umask-0022", "umask-0277"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


async def send_both(directory: Path) -> None:
    settings = load_settings(
        _env_file=None,
        NOTIFICATION_OUTBOX_DIR=str(directory),
        FROM_EMAIL="noreply@pgnotify.example",
    )
    await OutboxEmailChannel(settings).send(EMAIL)
    await OutboxSmsChannel(settings).send(SMS)
    await OutboxSmsChannel(settings).send(SMS)  # appending keeps the file as it is


async def test_the_outbox_creates_its_folders_0700_and_its_files_0600_whatever_the_umask(
    tmp_path: Path, umask: int
) -> None:
    """A missing outbox (and its missing parent) are created 0700; the .eml and sms.jsonl
    are 0600 and still writable by the owner on the next append."""
    outbox = tmp_path / "state" / "outbox"
    await send_both(outbox)
    assert mode(tmp_path / "state") == 0o700
    assert mode(outbox) == 0o700
    assert mode(outbox / "41.eml") == 0o600
    assert mode(outbox / "sms.jsonl") == 0o600
    assert len((outbox / "sms.jsonl").read_text(encoding="utf-8").splitlines()) == 2


async def test_a_folder_the_operator_created_keeps_its_mode_and_the_files_are_still_0600(
    tmp_path: Path,
) -> None:
    """pgnotify tightens what it creates, never what it finds: a 0750 folder (shared with a
    group on purpose) stays 0750, and the files written into it are 0600."""
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    os.chmod(outbox, 0o750)
    previous = os.umask(0o000)
    try:
        await send_both(outbox)
    finally:
        os.umask(previous)
    assert mode(outbox) == 0o750
    assert mode(outbox / "41.eml") == 0o600
    assert mode(outbox / "sms.jsonl") == 0o600
