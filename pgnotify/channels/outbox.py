"""The development default: write what would be sent to files instead of sending it.

One ``<notification-id>.eml`` per email (openable in any mail client; a retry rewrites
the same file, so the outbox holds one file per notification) and one JSON line per SMS
in ``sms.jsonl``. A full disk or an unwritable folder is a ``TransientError`` (the row
retries), never a crash, and never leaves part of a file or of a line behind. File I/O
runs in a thread so a slow disk never stalls the loop.

What the outbox holds is personal data (names, addresses, phone numbers): the folders it
creates are ``0700`` and the files ``0600``, whatever the umask. A folder that already
exists keeps the permissions its owner gave it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from pgnotify.channels.base import EmailMessage, Message, Receipt, SmsMessage
from pgnotify.channels.mime import build_mime
from pgnotify.errors import PermanentError, TransientError
from pgnotify.segments import count_segments, is_e164
from pgnotify.settings import Settings


def _outbox_error(path: Path, exc: OSError) -> TransientError:
    # Name the path that failed when it is not the file itself (a folder in the way).
    where = f": {exc.filename}" if exc.filename and str(exc.filename) != str(path) else ""
    return TransientError(f"outbox {path}: {exc.strerror or exc}{where} (errno {exc.errno})")


DIRECTORY_MODE = 0o700
FILE_MODE = 0o600


def make_directory(directory: Path) -> None:
    """``mkdir -p`` creating each missing folder ``0700``; a file in the folder's place is
    ENOTDIR, not mkdir's baffling EEXIST."""
    if directory.is_dir():
        return
    try:
        directory.mkdir(mode=DIRECTORY_MODE)
    except FileNotFoundError:
        make_directory(directory.parent)
        make_directory(directory)
        return
    except FileExistsError as exc:
        if directory.is_dir():  # another writer made it in between
            return
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(directory)) from exc
    # mkdir's mode passes through the umask, which may take the owner's bits too.
    os.chmod(directory, DIRECTORY_MODE)


def _write_atomically(target: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, then rename: never half a file visible."""
    make_directory(target.parent)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".eml", dir=target.parent)
    try:
        os.fchmod(fd, FILE_MODE)  # mkstemp's 0600 passes through the umask
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _append_line(path: Path, line: str) -> None:
    """Append one whole line, or nothing: never a fragment that the retry would extend.

    A nearly full disk takes part of a write before ENOSPC; the file is then cut back to
    where it ended, or the retried line would be glued to that fragment and unreadable.
    The exclusive lock keeps concurrent writers (sends of one batch run in parallel
    threads, or two daemons share a folder) out of each other's lines and cut-backs.
    """
    data = (line + "\n").encode("utf-8")
    make_directory(path.parent)
    created = True
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        created = False
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        if created:
            os.fchmod(fd, FILE_MODE)  # the umask may have taken the owner's bits
        fcntl.flock(fd, fcntl.LOCK_EX)
        end = os.lseek(fd, 0, os.SEEK_END)
        try:
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
        except OSError:
            with contextlib.suppress(OSError):  # a device such as /dev/full cannot be cut
                os.ftruncate(fd, end)
            raise
    finally:
        os.close(fd)  # also releases the lock


class OutboxEmailChannel:
    """Email channel that writes ``.eml`` files atomically (temp file + rename)."""

    name = "email"
    mode = "outbox"

    def __init__(self, settings: Settings) -> None:
        self.directory = Path(settings.NOTIFICATION_OUTBOX_DIR)
        self.from_email = settings.FROM_EMAIL

    async def send(self, message: Message) -> Receipt:
        """Write ``message`` as ``<id>.eml``; the receipt is the file name."""
        if not isinstance(message, EmailMessage):
            raise PermanentError(f"email outbox cannot send {type(message).__name__}")
        data = build_mime(message, from_email=self.from_email)
        target = self.directory / f"{message.notification_id}.eml"
        try:
            await asyncio.to_thread(_write_atomically, target, data)
        except OSError as exc:
            raise _outbox_error(target, exc) from exc
        return Receipt(provider_id=target.name)

    async def aclose(self) -> None:
        """Nothing to release: every write opens and closes its own file."""


class OutboxSmsChannel:
    """SMS channel that appends one JSON object per message to ``sms.jsonl``."""

    name = "sms"
    mode = "outbox"

    def __init__(self, settings: Settings) -> None:
        self.path = Path(settings.NOTIFICATION_OUTBOX_DIR) / "sms.jsonl"
        self.from_number = settings.TWILIO_PHONE_NUMBER

    async def send(self, message: Message) -> Receipt:
        """Append ``message`` to ``sms.jsonl``; E.164 is enforced as Twilio would."""
        if not isinstance(message, SmsMessage):
            raise PermanentError(f"sms outbox cannot send {type(message).__name__}")
        if not is_e164(message.to_number):
            raise PermanentError(f"recipient {message.to_number!r} is not an E.164 number")
        segments = count_segments(message.body)
        line = json.dumps(
            {
                "notification_id": message.notification_id,
                "to": message.to_number,
                "from": self.from_number,
                "body": message.body,
                "segments": segments.segments,
                "encoding": segments.encoding,
                "written_at": datetime.now(UTC).isoformat(),
            },
            ensure_ascii=False,
        )
        try:
            await asyncio.to_thread(_append_line, self.path, line)
        except OSError as exc:
            raise _outbox_error(self.path, exc) from exc
        return Receipt(provider_id=f"sms.jsonl#{message.notification_id}")

    async def aclose(self) -> None:
        """Nothing to release."""
