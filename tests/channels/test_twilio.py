"""The SMS channel through the real twilio client against the Twilio-shaped peer."""

from __future__ import annotations

import time
from typing import Any

import pytest
from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client

from pgnotify.channels.base import SmsMessage
from pgnotify.channels.sms import TwilioChannel, classify_twilio_error
from pgnotify.errors import ConfigurationError, PermanentError, TransientError
from pgnotify.settings import load_settings
from tests.peers.twilio import ACCOUNT_SID, AUTH_TOKEN, TwilioPeer

# twilio-python still passes aiohttp's deprecated BasicAuth; not ours to fix.
pytestmark = pytest.mark.filterwarnings(
    "ignore:BasicAuth is deprecated:DeprecationWarning",
    "ignore:The 'auth' parameter is deprecated:DeprecationWarning",
)

SMS = SmsMessage(notification_id=5, to_number="+34600111222", body="Studio Nine: see you at 15:30")
FROM = "+15550001111"


def _channel(peer: TwilioPeer, **overrides: Any) -> TwilioChannel:
    options: dict[str, Any] = {
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "TWILIO_PHONE_NUMBER": FROM,
        "TWILIO_API_URL": peer.base_url,
        "NOTIFICATION_SEND_TIMEOUT": 5,
    }
    options.update(overrides)
    return TwilioChannel(load_settings(**options))


async def test_a_created_message_returns_its_sid(twilio_server: TwilioPeer) -> None:
    channel = _channel(twilio_server)
    receipt = await channel.send(SMS)
    await channel.aclose()
    (received,) = twilio_server.messages
    assert receipt.provider_id == received.sid and received.sid.startswith("SM")
    assert (received.to, received.from_, received.body) == (SMS.to_number, "+15550001111", SMS.body)
    assert received.messaging_service_sid is None


async def test_a_messaging_service_replaces_the_from_number(twilio_server: TwilioPeer) -> None:
    channel = _channel(twilio_server, TWILIO_MESSAGING_SERVICE_SID="MG" + "1" * 32)
    await channel.send(SMS)
    await channel.aclose()
    (received,) = twilio_server.messages
    assert received.messaging_service_sid == "MG" + "1" * 32 and received.from_ is None


async def test_stray_region_and_edge_variables_cannot_redirect_traffic(
    twilio_server: TwilioPeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TWILIO_REGION", "ie1")
    monkeypatch.setenv("TWILIO_EDGE", "dublin")
    channel = _channel(twilio_server)
    await channel.send(SMS)
    await channel.aclose()
    assert len(twilio_server.messages) == 1


async def test_twilio_api_url_rewrites_the_api_host(twilio_server: TwilioPeer) -> None:
    channel = _channel(twilio_server)
    await channel.send(SMS)
    await channel.aclose()
    assert twilio_server.requests == [("POST", f"/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json")]


async def test_a_number_that_is_not_e164_fails_before_any_request(
    twilio_server: TwilioPeer,
) -> None:
    channel = _channel(twilio_server)
    with pytest.raises(PermanentError, match=r"E\.164"):
        await channel.send(SmsMessage(1, "600 111 222", "hi"))
    assert twilio_server.requests == []


@pytest.mark.parametrize(
    ("status", "code", "error", "opt_out"),
    [
        (400, 21211, PermanentError, False),
        (400, 21610, PermanentError, True),
        (500, 20500, TransientError, False),
        (401, 20003, ConfigurationError, False),
    ],
)
async def test_provider_errors_are_classified(
    twilio_server: TwilioPeer, status: int, code: int, error: type[Exception], opt_out: bool
) -> None:
    twilio_server.fail_next(status, code=code, message=f"Error {code} from the peer")
    channel = _channel(twilio_server)
    with pytest.raises(error) as caught:
        await channel.send(SMS)
    await channel.aclose()
    assert f"HTTP {status} code {code}" in str(caught.value)
    assert f"Error {code} from the peer" in str(caught.value)
    assert getattr(caught.value, "opt_out", False) is opt_out
    assert len(twilio_server.requests) == 1  # the client never retried by itself


async def test_rate_limits_are_transient_and_honour_retry_after(twilio_server: TwilioPeer) -> None:
    twilio_server.fail_next(429, code=20429, retry_after="30")
    channel = _channel(twilio_server)
    with pytest.raises(TransientError) as caught:
        await channel.send(SMS)
    assert caught.value.retry_after == 30.0
    await channel.send(SMS)  # and the next attempt goes through
    await channel.aclose()
    assert len(twilio_server.messages) == 1


async def test_wrong_credentials_are_a_configuration_error(twilio_server: TwilioPeer) -> None:
    channel = _channel(twilio_server, TWILIO_AUTH_TOKEN="wrong")
    with pytest.raises(ConfigurationError, match="20003"):
        await channel.send(SMS)
    assert (await channel.check()).startswith("FAIL twilio")
    await channel.aclose()


async def test_check_fetches_the_account(twilio_server: TwilioPeer) -> None:
    channel = _channel(twilio_server)
    assert (
        await channel.check()
        == f"OK twilio {twilio_server.base_url}: account {ACCOUNT_SID} is active"
    )
    await channel.aclose()


async def test_a_stalled_api_is_a_transient_timeout(twilio_server: TwilioPeer) -> None:
    twilio_server.stall_next(3.0)
    channel = _channel(twilio_server, NOTIFICATION_SEND_TIMEOUT=0.5)
    started = time.monotonic()
    with pytest.raises(TransientError, match=r"timed out after 0\.5s"):
        await channel.send(SMS)
    assert time.monotonic() - started < 2.5  # the timeout fired, not the 3 s stall ending
    await channel.aclose()


async def test_an_unreachable_api_is_transient() -> None:
    peer = TwilioPeer()  # never started: nothing listens on its port
    channel = _channel(peer)
    with pytest.raises(TransientError, match="Twilio connection"):
        await channel.send(SMS)
    await channel.aclose()


async def test_authentication_is_checked_before_any_programmed_answer(
    twilio_server: TwilioPeer,
) -> None:
    """Wrong credentials get Twilio's 401 20003 even when an answer is programmed, and the
    programmed answer is left for the next authenticated request."""
    twilio_server.fail_next(500, code=20500, message="programmed for the authenticated")
    stranger = _channel(twilio_server, TWILIO_AUTH_TOKEN="wrong")
    with pytest.raises(ConfigurationError, match=r"HTTP 401 code 20003: .*Authenticate"):
        await stranger.send(SMS)
    await stranger.aclose()
    channel = _channel(twilio_server)
    with pytest.raises(TransientError, match="programmed for the authenticated"):
        await channel.send(SMS)
    await channel.aclose()
    assert twilio_server.messages == []
    assert len(twilio_server.requests) == 2


async def test_an_empty_body_is_refused_by_twilio_and_fails_permanently(
    twilio_server: TwilioPeer,
) -> None:
    """pgnotify does not check the body itself: Twilio's 400 21602 fails the row for good."""
    channel = _channel(twilio_server)
    with pytest.raises(
        PermanentError, match=r"HTTP 400 code 21602: .*Message body is required"
    ) as caught:
        await channel.send(SmsMessage(5, SMS.to_number, ""))
    await channel.aclose()
    assert caught.value.opt_out is False
    assert twilio_server.messages == [] and len(twilio_server.requests) == 1


async def test_sending_to_our_own_number_is_an_invalid_to_and_fails_permanently(
    twilio_server: TwilioPeer,
) -> None:
    """An E.164 ``To`` that Twilio still refuses (our own sender number) is 400 21211."""
    channel = _channel(twilio_server)
    with pytest.raises(PermanentError, match=r"HTTP 400 code 21211: .*\+15550001111"):
        await channel.send(SmsMessage(5, FROM, "hi"))
    await channel.aclose()
    assert twilio_server.messages == [] and len(twilio_server.requests) == 1


def _create_directly(peer: TwilioPeer, data: dict[str, str]) -> TwilioRestException:
    """POST Messages.json with exactly ``data`` through the real (synchronous) twilio client,
    for requests pgnotify's channel never builds; returns the error it raised."""
    client = Client(ACCOUNT_SID, AUTH_TOKEN)
    client.api.base_url = peer.base_url
    with pytest.raises(TwilioRestException) as caught:
        client.api.v2010.create("POST", f"/Accounts/{ACCOUNT_SID}/Messages.json", data=data)
    return caught.value


@pytest.mark.parametrize(
    ("data", "code", "message"),
    [
        ({"From": FROM, "Body": "hi"}, 21604, "A 'To' phone number is required."),
        ({"To": "", "From": FROM, "Body": "hi"}, 21604, "A 'To' phone number is required."),
        (
            {"To": "600 111 222", "From": FROM, "Body": "hi"},
            21211,
            "The 'To' number 600 111 222 is not a valid phone number.",
        ),
        (
            {"To": "+34600111222", "Body": "hi"},
            21603,
            "A 'From' or 'MessagingServiceSid' parameter is required to send a message.",
        ),
        ({"To": "+34600111222", "From": FROM}, 21602, "Message body is required."),
        ({"To": "+34600111222", "From": FROM, "Body": ""}, 21602, "Message body is required."),
    ],
    ids=["to-missing", "to-empty", "to-not-e164", "no-sender", "body-missing", "body-empty"],
)
def test_the_peer_refuses_malformed_messages_as_twilio_does(
    twilio_server: TwilioPeer, data: dict[str, str], code: int, message: str
) -> None:
    """Twilio's 400 error document reaches the real client as ``TwilioRestException`` with
    the code, and pgnotify classifies every one of them as permanent (no opt-out)."""
    error = _create_directly(twilio_server, data)
    assert (error.status, error.code) == (400, code)
    assert error.msg == f"Unable to create record: {message}"
    assert twilio_server.messages == []
    classified = classify_twilio_error(error.status, error.code, error.msg)
    assert isinstance(classified, PermanentError) and not classified.opt_out


def test_a_messaging_service_is_a_sender_for_the_peer(twilio_server: TwilioPeer) -> None:
    """``MessagingServiceSid`` without ``From`` is accepted, so 21603 is not a blanket refusal."""
    client = Client(ACCOUNT_SID, AUTH_TOKEN)
    client.api.base_url = twilio_server.base_url
    created = client.api.v2010.create(
        "POST",
        f"/Accounts/{ACCOUNT_SID}/Messages.json",
        data={"To": "+34600111222", "MessagingServiceSid": "MG" + "1" * 32, "Body": "hi"},
    )
    assert created["sid"].startswith("SM") and len(twilio_server.messages) == 1
