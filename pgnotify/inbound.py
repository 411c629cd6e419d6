"""The reply poller: Twilio's Messages list into ``pgnotify.inbound_messages``.

Optional (``NOTIFICATION_INBOUND_POLL`` seconds, 0 = off), for a shop without an SMS
webhook. Every interval it asks Twilio for the messages our number (or messaging service)
received since the newest reply it holds, minus ``RESUME_OVERLAP`` (Twilio's list is
filtered on the sent time, and a message can show up in it a little late), and inserts
them; known SIDs are dropped by the insert, so overlaps and the webhook cost nothing. The
trigger on the table acts on each new one, as for the webhook's insert.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pgnotify import queries
from pgnotify.channels.sms import TwilioChannel
from pgnotify.db import DB_ERRORS
from pgnotify.errors import DeliveryError
from pgnotify.logs import get_logger
from pgnotify.runtime import Runtime
from pgnotify.text import describe_error
from pgnotify.wakeup import wait_event

RESUME_OVERLAP = timedelta(minutes=5)
FIRST_LOOKBACK = timedelta(days=1)
"""On a first poll (no reply held yet), how far back to look."""
_POLL_ERRORS: tuple[type[BaseException], ...] = (DeliveryError, *DB_ERRORS)


async def poll_inbound(rt: Runtime, channel: TwilioChannel) -> None:
    """Every ``NOTIFICATION_INBOUND_POLL`` seconds, fetch and insert new replies."""
    log = get_logger(component="inbound_poller")
    interval = rt.settings.NOTIFICATION_INBOUND_POLL
    while not await wait_event(rt.stopping, interval):
        try:
            newest = await rt.pool.fetchval(
                queries.INBOUND_RESUME, datetime.now(UTC) - FIRST_LOOKBACK
            )
            messages = await channel.list_inbound(newest - RESUME_OVERLAP)
            if not messages:
                continue
            rows = await rt.pool.fetch(
                queries.INSERT_INBOUND,
                [m.sid for m in messages],
                [m.from_address for m in messages],
                [m.to_address for m in messages],
                [m.body for m in messages],
                [m.sent_at for m in messages],
            )
        except _POLL_ERRORS as exc:
            log.warning("inbound_poll_failed", error=describe_error(exc))
            continue
        if rows:
            log.info("inbound_messages", count=len(rows), fetched=len(messages))
