"""Email over SMTP (aiosmtplib) with a small pool of reused connections.

Security follows ``SMTP_SECURITY``: ``starttls`` requires the upgrade (a server that does
not offer STARTTLS is a configuration error, never a reason to send in clear), ``tls``
is implicit TLS, ``none`` is for local relays and tests. Each send holds one pooled
connection; a connection that failed in any way is closed, never reused. A pooled
connection the server dropped while idle fails at ``MAIL FROM``, before anything was
handed over, so that one step is retried once on a fresh connection.
"""

from __future__ import annotations

import asyncio
import socket
import ssl

from aiosmtplib import (
    SMTP,
    SMTPAuthenticationError,
    SMTPConnectError,
    SMTPException,
    SMTPRecipientsRefused,
    SMTPResponseException,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)

from pgnotify.channels.base import EmailMessage, Message, Receipt
from pgnotify.channels.mime import build_mime
from pgnotify.errors import (
    ConfigurationError,
    DeliveryError,
    PermanentError,
    TransientError,
)
from pgnotify.settings import Settings

AUTH_CODES = frozenset({530, 534, 535, 538})
"""Replies that mean our credentials (or lack of them) are wrong: pause the channel."""


def classify_smtp_error(exc: BaseException) -> DeliveryError:
    """Map an SMTP failure to what happens next; the message carries code and text.

    4xx, timeouts and disconnects are transient; 5xx permanent; 530/534/535/538 and a
    missing STARTTLS, auth mechanism or a certificate that does not verify are
    configuration errors (retrying cannot help until an operator acts).
    """
    if isinstance(exc, DeliveryError):
        return exc
    if isinstance(exc, SMTPRecipientsRefused) and exc.recipients:
        return classify_smtp_error(exc.recipients[0])
    if isinstance(exc, SMTPResponseException):
        text = f"SMTP {exc.code} {exc.message}"
        if isinstance(exc, SMTPAuthenticationError) or exc.code in AUTH_CODES:
            return ConfigurationError(text)
        if 500 <= exc.code < 600:
            return PermanentError(text)
        return TransientError(text)
    if _caused_by(exc, ssl.SSLCertVerificationError):
        return ConfigurationError(f"SMTP TLS certificate rejected: {exc}")
    if isinstance(exc, TimeoutError | SMTPTimeoutError):
        return TransientError(f"SMTP timeout: {exc or 'no answer'}")
    if isinstance(exc, SMTPServerDisconnected | SMTPConnectError | OSError):
        return TransientError(f"SMTP connection: {exc}")
    if isinstance(exc, SMTPException):
        # Raised by aiosmtplib itself: no STARTTLS offered, no usable AUTH mechanism.
        return ConfigurationError(f"SMTP: {exc}")
    return TransientError(f"SMTP {type(exc).__name__}: {exc}")


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class SmtpChannel:
    """Sends ``EmailMessage`` over SMTP; the receipt is the message's Message-ID."""

    name = "email"
    mode = "smtp"

    def __init__(self, settings: Settings, *, tls_context: ssl.SSLContext | None = None) -> None:
        """``tls_context`` replaces the system trust store (tests use a private CA)."""
        self.host = settings.SMTP_SERVER or "localhost"
        self.port = settings.smtp_port
        self.security = settings.SMTP_SECURITY
        self.username = settings.SMTP_USERNAME
        self.password = (
            settings.SMTP_PASSWORD.get_secret_value() if settings.SMTP_PASSWORD else None
        )
        self.from_email = settings.FROM_EMAIL
        self.timeout = settings.NOTIFICATION_SEND_TIMEOUT
        self.tls_context = tls_context
        # getfqdn() may block on DNS inside aiosmtplib; the host name is enough for EHLO.
        self.local_hostname = socket.gethostname() or "localhost"
        self._slots = asyncio.Semaphore(settings.SMTP_POOL_SIZE)
        self._idle: list[SMTP] = []
        self.connections_opened = 0

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port} ({self.security})"

    async def send(self, message: Message) -> Receipt:
        """Deliver one email within ``NOTIFICATION_SEND_TIMEOUT`` or raise a classified error."""
        if not isinstance(message, EmailMessage):
            raise PermanentError(f"SMTP channel cannot send {type(message).__name__}")
        data = build_mime(message, from_email=self.from_email)
        try:
            async with asyncio.timeout(self.timeout):
                async with self._slots:
                    await self._deliver(message.to_address, data)
        except TimeoutError as exc:
            raise TransientError(
                f"SMTP send to {self.where} timed out after {self.timeout:g}s"
            ) from exc
        except (SMTPException, OSError) as exc:
            raise classify_smtp_error(exc) from exc
        return Receipt(provider_id=message.message_id)

    async def check(self) -> str:
        """Connect, EHLO, STARTTLS/TLS and log in; one line starting with OK or FAIL."""
        try:
            async with asyncio.timeout(self.timeout):
                smtp = await self._connect()
                try:
                    await smtp.quit()
                except (SMTPException, OSError):
                    smtp.close()
        except TimeoutError:
            return f"FAIL smtp {self.where}: timed out after {self.timeout:g}s"
        except (SMTPException, OSError) as exc:
            return f"FAIL smtp {self.where}: {classify_smtp_error(exc)}"
        auth = f", logged in as {self.username}" if self.username else ""
        return f"OK smtp {self.where}{auth}"

    async def aclose(self) -> None:
        """QUIT every idle connection (best effort; the server may already be gone)."""
        idle, self._idle = self._idle, []
        for smtp in idle:
            try:
                async with asyncio.timeout(2):
                    await smtp.quit()
            except (SMTPException, OSError, TimeoutError):
                smtp.close()

    async def _deliver(self, to: str, data: bytes) -> None:
        smtp, reused = await self._checkout()
        try:
            try:
                await smtp.mail(self.from_email)
            except (SMTPServerDisconnected, SMTPResponseException) as exc:
                stale = isinstance(exc, SMTPServerDisconnected) or exc.code == 421
                if not (reused and stale):
                    raise
                smtp.close()
                smtp = await self._connect()
                await smtp.mail(self.from_email)
            await smtp.rcpt(to)
            await smtp.data(data)
        except BaseException:
            # After any failure (or a cancellation mid-DATA) the session state is
            # unknown: close it rather than hand a confused connection to the next send.
            smtp.close()
            raise
        self._idle.append(smtp)

    async def _checkout(self) -> tuple[SMTP, bool]:
        while self._idle:
            smtp = self._idle.pop()
            if smtp.is_connected:
                return smtp, True
            smtp.close()
        return await self._connect(), False

    async def _connect(self) -> SMTP:
        smtp = SMTP(
            hostname=self.host,
            port=self.port,
            local_hostname=self.local_hostname,
            use_tls=self.security == "tls",
            # True means required: aiosmtplib raises if the server does not offer it.
            start_tls=self.security == "starttls",
            validate_certs=True,
            tls_context=self.tls_context,
            username=self.username,
            password=self.password,
            timeout=self.timeout,
        )
        await smtp.connect()
        self.connections_opened += 1
        if smtp.last_ehlo_response is None:
            await smtp.ehlo()
        return smtp
