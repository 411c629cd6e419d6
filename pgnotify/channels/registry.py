"""Pick each channel's implementation from the settings."""

from __future__ import annotations

from pgnotify.channels.base import Channel
from pgnotify.channels.email import SmtpChannel
from pgnotify.channels.outbox import OutboxEmailChannel, OutboxSmsChannel
from pgnotify.channels.sms import TwilioChannel
from pgnotify.settings import Settings


def build_channels(settings: Settings) -> dict[str, Channel]:
    """``{"email": ..., "sms": ...}``: SMTP / Twilio when configured, else the outbox.

    Construction does no I/O (connections open on first send), so this is safe to call
    outside the event loop. In-app delivery is the daemon's own SQL, not a channel here.
    """
    email: Channel = (
        SmtpChannel(settings) if settings.smtp_configured else OutboxEmailChannel(settings)
    )
    sms: Channel = (
        TwilioChannel(settings) if settings.twilio_configured else OutboxSmsChannel(settings)
    )
    return {"email": email, "sms": sms}
