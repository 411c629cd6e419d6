"""The outbox: what development mode writes instead of sending."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path

import pytest

from pgnotify.channels.base import EmailMessage, SmsMessage
from pgnotify.channels.email import SmtpChannel
from pgnotify.channels.outbox import OutboxEmailChannel, OutboxSmsChannel
from pgnotify.channels.registry import build_channels
from pgnotify.channels.sms import TwilioChannel
from pgnotify.errors import PermanentError, TransientError
from pgnotify.settings import load_settings

EMAIL = EmailMessage(
    notification_id=31,
    to_address="maria@example.com",
    to_name="María",
    from_name="Studio Nine",
    reply_to=None,
    subject="Reserva confirmada",
    text="Hola\n",
    html="<p>Hola</p>\n",
    message_id="<pgnotify.31@pgnotify.example>",
)


async def test_each_email_is_an_eml_file_named_after_the_notification(tmp_path: Path) -> None:
    channel = OutboxEmailChannel(load_settings(NOTIFICATION_OUTBOX_DIR=tmp_path / "out"))
    receipt = await channel.send(EMAIL)
    await channel.send(EMAIL)  # a retry rewrites the same file
    assert receipt.provider_id == "31.eml"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["31.eml"]
    parsed = BytesParser(policy=default_policy).parsebytes((tmp_path / "out/31.eml").read_bytes())
    assert parsed["Subject"] == "Reserva confirmada"
    body = parsed.get_body(("plain",))
    assert body is not None and body.get_content() == "Hola\r\n"


async def test_each_sms_is_one_json_line(tmp_path: Path) -> None:
    channel = OutboxSmsChannel(load_settings(NOTIFICATION_OUTBOX_DIR=tmp_path))
    await channel.send(SmsMessage(1, "+34600111222", "Hola ñ"))
    await channel.send(SmsMessage(2, "+15551234567", "Hi\nthere"))
    lines = [json.loads(line) for line in (tmp_path / "sms.jsonl").read_text().splitlines()]
    assert [(x["notification_id"], x["to"], x["body"]) for x in lines] == [
        (1, "+34600111222", "Hola ñ"),
        (2, "+15551234567", "Hi\nthere"),
    ]
    assert lines[0]["segments"] == 1 and lines[0]["encoding"] == "GSM-7"


async def test_the_sms_outbox_refuses_what_twilio_would(tmp_path: Path) -> None:
    channel = OutboxSmsChannel(load_settings(NOTIFICATION_OUTBOX_DIR=tmp_path))
    with pytest.raises(PermanentError, match=r"E\.164"):
        await channel.send(SmsMessage(1, "0600", "hi"))


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    tmp_path.chmod(0o500)
    yield tmp_path
    tmp_path.chmod(0o700)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
async def test_an_unwritable_outbox_is_a_transient_error(read_only_dir: Path) -> None:
    settings = load_settings(NOTIFICATION_OUTBOX_DIR=read_only_dir / "out")
    with pytest.raises(TransientError, match="outbox"):
        await OutboxEmailChannel(settings).send(EMAIL)
    with pytest.raises(TransientError, match="outbox"):
        await OutboxSmsChannel(settings).send(SmsMessage(1, "+34600111222", "x"))


async def test_an_outbox_that_is_a_file_is_a_transient_error(tmp_path: Path) -> None:
    blocker = tmp_path / "out"
    blocker.write_text("not a directory")
    settings = load_settings(NOTIFICATION_OUTBOX_DIR=blocker)
    with pytest.raises(TransientError, match=r"outbox .*out"):
        await OutboxEmailChannel(settings).send(EMAIL)
    with pytest.raises(TransientError, match="outbox"):
        await OutboxSmsChannel(settings).send(SmsMessage(1, "+34600111222", "x"))


def test_channels_use_the_outbox_unless_a_provider_is_configured(tmp_path: Path) -> None:
    bare = build_channels(load_settings(NOTIFICATION_OUTBOX_DIR=tmp_path))
    assert {name: c.mode for name, c in bare.items()} == {"email": "outbox", "sms": "outbox"}
    full = build_channels(
        load_settings(
            SMTP_SERVER="smtp.example",
            TWILIO_ACCOUNT_SID="AC1",
            TWILIO_AUTH_TOKEN="t",
            TWILIO_PHONE_NUMBER="+15550001111",
        )
    )
    assert isinstance(full["email"], SmtpChannel) and isinstance(full["sms"], TwilioChannel)
    assert {name: c.name for name, c in full.items()} == {"email": "email", "sms": "sms"}
