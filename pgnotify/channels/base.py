"""The channel protocol and the messages that cross it.

A channel turns one composed message into one delivery attempt and either returns a
``Receipt`` or raises a ``pgnotify.errors.DeliveryError`` subclass. Channels know nothing
about the queue: claiming, retrying and recording belong to the worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Receipt:
    """Proof of hand-over to the provider (SMTP Message-ID, Twilio SID, file name)."""

    provider_id: str | None


@dataclass(frozen=True, slots=True)
class EmailMessage:
    """A rendered email, not yet serialised to MIME."""

    notification_id: int
    to_address: str
    to_name: str
    from_name: str
    reply_to: str | None
    subject: str
    text: str
    html: str
    message_id: str
    ics: str | None = None
    ics_method: str | None = None


@dataclass(frozen=True, slots=True)
class SmsMessage:
    """A rendered SMS for an E.164 number."""

    notification_id: int
    to_number: str
    body: str


@dataclass(frozen=True, slots=True)
class InappMessage:
    """A rendered in-app message; the daemon inserts it into ``pgnotify.inbox``."""

    notification_id: int
    title: str
    body: str


Message = EmailMessage | SmsMessage | InappMessage


class Channel(Protocol):
    """What the worker needs of a channel."""

    name: str
    """The ``channel`` column value this channel serves: ``email``, ``sms``..."""

    mode: str
    """How it delivers (``smtp``, ``twilio``, ``outbox``...), for logs and health."""

    async def send(self, message: Message) -> Receipt:
        """Deliver one message or raise a classified ``DeliveryError``."""
        ...

    async def aclose(self) -> None:
        """Release connections; called once at shutdown."""
        ...
