"""The SMTP channel against a real aiosmtpd server on 127.0.0.1."""

from __future__ import annotations

import time
from typing import Any

import pytest

from pgnotify.channels.base import EmailMessage
from pgnotify.channels.email import SmtpChannel
from pgnotify.errors import ConfigurationError, PermanentError, TransientError
from pgnotify.settings import load_settings
from tests.peers.fixtures import SMTP_PASSWORD, SMTP_USER
from tests.peers.smtp import SmtpPeer

FROM = "noreply@pgnotify.example"


def _channel(peer: SmtpPeer, security: str = "none", **overrides: Any) -> SmtpChannel:
    options: dict[str, Any] = {
        "SMTP_SERVER": "localhost" if security != "none" else peer.host,
        "SMTP_PORT": peer.port,
        "SMTP_SECURITY": security,
        "FROM_EMAIL": FROM,
        "NOTIFICATION_SEND_TIMEOUT": 5,
        "SMTP_POOL_SIZE": 2,
    }
    if peer.credentials:
        options.update(SMTP_USERNAME=SMTP_USER, SMTP_PASSWORD=SMTP_PASSWORD)
    options.update(overrides)
    tls = peer.client_tls_context() if security != "none" else None
    return SmtpChannel(load_settings(**options), tls_context=tls)


def _email(notification_id: int = 9, **fields: Any) -> EmailMessage:
    base: dict[str, Any] = {
        "notification_id": notification_id,
        "to_address": "maria@example.com",
        "to_name": "María López",
        "from_name": "Studio Nine",
        "reply_to": "hello@studionine.example",
        "subject": "Your booking is confirmed",
        "text": "See you on Tuesday.\n",
        "html": "<p>See you on <b>Tuesday</b>.</p>\n",
        "message_id": f"<pgnotify.{notification_id}@pgnotify.example>",
        "ics": "BEGIN:VCALENDAR\r\nMETHOD:REQUEST\r\nEND:VCALENDAR\r\n",
        "ics_method": "REQUEST",
    }
    base.update(fields)
    return EmailMessage(**base)


async def test_starttls_with_auth_delivers_every_part(smtp_server_tls: SmtpPeer) -> None:
    channel = _channel(smtp_server_tls, "starttls")
    receipt = await channel.send(_email())
    await channel.aclose()

    assert receipt.provider_id == "<pgnotify.9@pgnotify.example>"
    (received,) = smtp_server_tls.messages
    assert received.tls and received.login == SMTP_USER
    assert received.mail_from == FROM and received.rcpt_tos == ("maria@example.com",)
    parsed = received.parsed()
    assert parsed["Subject"] == "Your booking is confirmed"
    assert parsed["To"].addresses[0].display_name == "María López"
    assert parsed["From"].addresses[0].display_name == "Studio Nine"
    assert parsed["Reply-To"].addresses[0].addr_spec == "hello@studionine.example"
    assert parsed["Message-ID"] == "<pgnotify.9@pgnotify.example>"
    assert parsed["Auto-Submitted"] == "auto-generated"
    plain, html = parsed.get_body(("plain",)), parsed.get_body(("html",))
    assert plain is not None and plain.get_content() == "See you on Tuesday.\r\n"
    assert html is not None and html.get_content() == "<p>See you on <b>Tuesday</b>.</p>\r\n"
    (calendar,) = [p for p in parsed.walk() if p.get_content_type() == "text/calendar"]
    assert calendar.get_param("method") == "REQUEST"
    assert "METHOD:REQUEST" in calendar.get_content()


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
async def test_implicit_tls_delivers(smtp_server_implicit_tls: SmtpPeer) -> None:
    channel = _channel(smtp_server_implicit_tls, "tls")
    await channel.send(_email())  # this server speaks nothing but TLS
    await channel.aclose()
    (received,) = smtp_server_implicit_tls.messages
    assert received.login == SMTP_USER


async def test_starttls_is_required_never_skipped(smtp_server: SmtpPeer) -> None:
    channel = _channel(smtp_server, "starttls")
    with pytest.raises(ConfigurationError, match="STARTTLS"):
        await channel.send(_email())
    assert smtp_server.messages == []


async def test_an_untrusted_certificate_is_a_configuration_error(smtp_server_tls: SmtpPeer) -> None:
    settings = load_settings(
        SMTP_SERVER="localhost",
        SMTP_PORT=smtp_server_tls.port,
        SMTP_SECURITY="starttls",
        SMTP_USERNAME=SMTP_USER,
        SMTP_PASSWORD=SMTP_PASSWORD,
        NOTIFICATION_SEND_TIMEOUT=5,
    )
    channel = SmtpChannel(settings)  # the system trust store does not know the test CA
    with pytest.raises(ConfigurationError):
        await channel.send(_email())


async def test_wrong_credentials_are_a_configuration_error(smtp_server_tls: SmtpPeer) -> None:
    channel = _channel(smtp_server_tls, "starttls", SMTP_PASSWORD="wrong")
    with pytest.raises(ConfigurationError, match="535"):
        await channel.send(_email())
    assert (await channel.check()).startswith("FAIL smtp")


async def test_check_reports_ok_for_a_working_relay(smtp_server_tls: SmtpPeer) -> None:
    line = await _channel(smtp_server_tls, "starttls").check()
    assert line.startswith("OK smtp localhost:") and SMTP_USER in line


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        ("451 4.3.0 Mailbox busy, try later", TransientError),
        ("550 5.1.1 No such user", PermanentError),
        ("535 5.7.8 Authentication credentials invalid", ConfigurationError),
    ],
)
async def test_server_replies_are_classified_with_code_and_text(
    smtp_server: SmtpPeer, reply: str, error: type[Exception]
) -> None:
    channel = _channel(smtp_server)
    smtp_server.fail_next(reply)
    with pytest.raises(error) as caught:
        await channel.send(_email())
    assert str(caught.value) == f"SMTP {reply}"
    await channel.send(_email())  # the next send works on a fresh connection
    assert len(smtp_server.messages) == 1
    await channel.aclose()


async def test_a_refused_recipient_is_permanent(smtp_server: SmtpPeer) -> None:
    smtp_server.fail_next("550 5.1.1 <maria@example.com>: unknown", stage="RCPT")
    with pytest.raises(PermanentError, match="550"):
        await _channel(smtp_server).send(_email())


async def test_421_is_transient_and_the_pool_reconnects(smtp_server: SmtpPeer) -> None:
    channel = _channel(smtp_server)
    await channel.send(_email(1))
    smtp_server.fail_next("421 4.7.0 Closing connection")
    with pytest.raises(TransientError, match="421"):
        await channel.send(_email(2))
    await channel.send(_email(3))
    await channel.aclose()
    assert [m.parsed()["Message-ID"] for m in smtp_server.messages] == [
        "<pgnotify.1@pgnotify.example>",
        "<pgnotify.3@pgnotify.example>",
    ]
    assert channel.connections_opened == 2


async def test_connections_are_reused_between_sends(smtp_server: SmtpPeer) -> None:
    channel = _channel(smtp_server)
    for n in range(5):
        await channel.send(_email(n))
    await channel.aclose()
    assert len(smtp_server.messages) == 5
    assert channel.connections_opened == 1


async def test_an_idle_connection_dropped_by_the_server_is_replaced() -> None:
    first = SmtpPeer().start()
    channel = _channel(first)
    await channel.send(_email(1))
    # The server restarts: the pooled connection is now dead.
    first.stop()
    second = SmtpPeer(port=first.port).start()
    try:
        await channel.send(_email(2))
        await channel.aclose()
    finally:
        second.stop()
    assert len(first.messages) == 1 and len(second.messages) == 1
    assert channel.connections_opened == 2


async def test_a_stalled_server_is_a_transient_timeout(smtp_server: SmtpPeer) -> None:
    """The send gives up at its timeout, not when the server answers; the next one works."""
    channel = _channel(smtp_server, NOTIFICATION_SEND_TIMEOUT=0.5)
    smtp_server.stall_next(30.0)
    started = time.monotonic()
    with pytest.raises(TransientError, match=r"timed out after 0\.5s"):
        await channel.send(_email())
    # Generous for a loaded machine, and still far from the server's 30 s answer.
    assert time.monotonic() - started < 10
    # The stalled connection was dropped: a fresh one delivers while the old one stalls.
    await channel.send(_email(10))
    await channel.aclose()
    (received,) = smtp_server.messages
    assert received.parsed()["Message-ID"] == "<pgnotify.10@pgnotify.example>"


async def test_an_unreachable_server_is_transient(smtp_server: SmtpPeer) -> None:
    channel = _channel(smtp_server, SMTP_PORT=1)
    with pytest.raises(TransientError, match="SMTP connection"):
        await channel.send(_email())


async def test_the_message_id_is_the_same_on_every_retry(smtp_server: SmtpPeer) -> None:
    channel = _channel(smtp_server)
    smtp_server.fail_next("451 4.3.0 later")
    with pytest.raises(TransientError):
        await channel.send(_email(77))
    receipt = await channel.send(_email(77))
    await channel.aclose()
    (received,) = smtp_server.messages
    assert (
        receipt.provider_id == received.parsed()["Message-ID"] == "<pgnotify.77@pgnotify.example>"
    )
