"""The one exception hierarchy of pgnotify.

Every failure of a delivery is one of these classes, and every class maps to exactly one
row state (see ``outcome.py``). Anything else escaping a channel is treated as transient,
so an unforeseen bug delays a notification instead of losing it.
"""

from __future__ import annotations

from pgnotify.text import one_line


class PgnotifyError(Exception):
    """Base of every error pgnotify raises on purpose."""


class SettingsError(PgnotifyError):
    """Configuration is invalid; the CLI prints it and exits 2."""


class InstallationError(PgnotifyError):
    """A file that ships with pgnotify (SQL, templates) is missing; the CLI exits 2."""


class DatabaseUnavailable(PgnotifyError):
    """The database cannot be reached (bad URL, host down, auth refused)."""


class DeliveryError(PgnotifyError):
    """A channel could not deliver one notification; the subclass says what happens next."""

    def __init__(self, message: str) -> None:
        # last_error is one line: providers sometimes answer with multi-line text.
        super().__init__(one_line(str(message)) or self.__class__.__name__)


class TransientError(DeliveryError):
    """Worth retrying later (timeouts, 4xx SMTP, 429/5xx HTTP)."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(DeliveryError):
    """Will never succeed as is: the row goes to ``failed`` at once.

    ``opt_out`` is set when the provider says the recipient unsubscribed (Twilio 21610):
    the daemon then records an opt-out so the triggers stop queueing that channel.
    """

    def __init__(self, message: str, *, opt_out: bool = False) -> None:
        super().__init__(message)
        self.opt_out = opt_out


class ConfigurationError(DeliveryError):
    """The provider rejected our credentials: pause the whole channel, consume no attempt."""


class SkipNotification(DeliveryError):
    """Nothing should be sent (for example the booking changed): the row becomes ``skipped``."""
