"""The development default: write what would be sent to files instead of sending it.

One ``<notification-id>.eml`` per email (openable in any mail client; a retry rewrites
the same file, so the outbox holds one file per notification) and one JSON line per SMS
in ``sms.jsonl``. A full disk or an unwritable folder is a ``TransientError`` (the row
retries), never a crash. File I/O runs in a thread so a slow disk never stalls the loop.
"""

from __future__ import annotations

import asyncio
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
    return TransientError(f"outbox {path}: {exc.strerror or exc} (errno {exc.errno})")


def _write_atomically(target: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, then rename: never half a file visible."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".eml", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _append_line(path: Path, line: str) -> None:
    """One write() on a file opened with O_APPEND: concurrent writers never interleave."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(line + "\n")


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
        self.directory = Path(settings.NOTIFICATION_OUTBOX_DIR)
        self.path = self.directory / "sms.jsonl"
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
