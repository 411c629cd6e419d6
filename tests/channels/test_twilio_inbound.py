"""Replies from Twilio's Messages list, through the real twilio client and the peer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pgnotify.channels.base import SmsMessage
from tests.channels.test_twilio import FROM, _channel
from tests.peers.twilio import TwilioPeer

pytestmark = pytest.mark.filterwarnings(
    "ignore:BasicAuth is deprecated:DeprecationWarning",
    "ignore:The 'auth' parameter is deprecated:DeprecationWarning",
)
SERVICE = "MG" + "2" * 32


async def test_every_page_of_replies_to_our_number_since_a_moment_oldest_first(
    twilio_server: TwilioPeer,
) -> None:
    twilio_server.max_page_size = 2  # five replies: three pages, followed by next_page_uri
    start = datetime.now(UTC).replace(microsecond=0)
    twilio_server.receive("+34600000009", "too old", to=FROM, sent=start - timedelta(hours=2))
    sids = [
        twilio_server.receive(
            f"+3460000000{i}", f"reply {i}", to=FROM, sent=start + timedelta(seconds=i)
        )
        for i in range(5)
    ]
    twilio_server.receive("+34600000008", "not ours", to="+15550009999", sent=start)
    channel = _channel(twilio_server)
    await channel.send(SmsMessage(notification_id=1, to_number="+34600000001", body="ours, out"))
    replies = await channel.list_inbound(start - timedelta(minutes=1))
    await channel.aclose()
    assert [(r.sid, r.body, r.to_address) for r in replies] == [
        (sid, f"reply {i}", FROM) for i, sid in enumerate(sids)
    ]
    assert replies[0].sent_at == start and replies[0].from_address == "+34600000000"
    lists = [p for m, p in twilio_server.requests if m == "GET" and p.endswith("Messages.json")]
    assert len(lists) == 3


async def test_a_messaging_service_keeps_its_own_replies(twilio_server: TwilioPeer) -> None:
    mine = twilio_server.receive(
        "+34600000001", "C", to="+15550002222", messaging_service_sid=SERVICE
    )
    twilio_server.receive(
        "+34600000002", "C", to="+15550003333", messaging_service_sid="MG" + "3" * 32
    )
    channel = _channel(twilio_server, TWILIO_MESSAGING_SERVICE_SID=SERVICE)
    replies = await channel.list_inbound(datetime.now(UTC) - timedelta(minutes=5))
    await channel.aclose()
    assert [r.sid for r in replies] == [mine]
