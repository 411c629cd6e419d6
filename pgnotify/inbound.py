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
from pgnotify.channels.sms import InboundSms, TwilioChannel
from pgnotify.db import DB_ERRORS
from pgnotify.errors import DeliveryError
from pgnotify.logs import get_logger
from pgnotify.maintenance import _sleep_or_stop as sleep_or_stop  # one way to wait
from pgnotify.runtime import Runtime
from pgnotify.text import describe_error

RESUME_OVERLAP = timedelta(minutes=5)
FIRST_LOOKBACK = timedelta(days=1)
"""On a first poll (no reply held yet), how far back to look."""


def resume_from(newest: datetime) -> datetime:
    """The ``date_sent_after`` of the next fetch, given the newest reply held."""
    return newest - RESUME_OVERLAP


def insert_arguments(
    messages: list[InboundSms],
) -> tuple[list[str], list[str], list[str | None], list[str], list[datetime | None]]:
    """The columns of ``queries.INSERT_INBOUND``, one list each."""
    return (
        [m.sid for m in messages],
        [m.from_address for m in messages],
        [m.to_address for m in messages],
        [m.body for m in messages],
        [m.sent_at for m in messages],
    )


async def poll_inbound(rt: Runtime, channel: TwilioChannel) -> None:
    """Every ``NOTIFICATION_INBOUND_POLL`` seconds, fetch and insert new replies."""
    log = get_logger(component="inbound_poller")
    interval = rt.settings.NOTIFICATION_INBOUND_POLL
    while not await sleep_or_stop(rt, interval):
        try:
            newest = await rt.pool.fetchval(
                queries.INBOUND_RESUME, datetime.now(UTC) - FIRST_LOOKBACK
            )
            messages = await channel.list_inbound(resume_from(newest))
            if not messages:
                continue
            rows = await rt.pool.fetch(queries.INSERT_INBOUND, *insert_arguments(messages))
        except DeliveryError as exc:
            log.warning("inbound_poll_failed", error=describe_error(exc))
            continue
        except DB_ERRORS as exc:
            log.warning("inbound_poll_failed", error=describe_error(exc))
            continue
        if rows:
            log.info("inbound_messages", count=len(rows), fetched=len(messages))
