"""A real SMTP server for tests: aiosmtpd on 127.0.0.1, recording and misbehaving on demand.

``SmtpPeer`` runs aiosmtpd's ``Controller`` in its own thread and loop. Optional STARTTLS
or implicit TLS with a ``trustme`` certificate (``client_tls_context()`` trusts it),
optional AUTH. The handler records every accepted message with its arrival time, and can
be told to answer the next N transactions with an error (451, 550, 421, 535...) or to
stall before answering.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as default_policy
from typing import Any

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the tiny race is acceptable in tests)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class ReceivedEmail:
    """One message the server accepted, as it arrived."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    monotonic: float
    wall: float
    tls: bool
    login: str | None

    def parsed(self) -> EmailMessage:
        """The message parsed with the stdlib's modern parser."""
        message = BytesParser(policy=default_policy).parsebytes(self.data)
        assert isinstance(message, EmailMessage)
        return message


@dataclass
class _Fault:
    reply: str | None  # an SMTP reply line such as "451 4.3.0 try later"
    stall: float  # seconds to wait before answering
    stage: str  # "RCPT" or "DATA"


@dataclass
class RecordingHandler:
    """aiosmtpd handler: records deliveries, and applies queued faults in order."""

    messages: list[ReceivedEmail] = field(default_factory=list)
    faults: deque[_Fault] = field(default_factory=deque)
    lock: threading.Lock = field(default_factory=threading.Lock)
    arrived: threading.Condition = field(init=False)
    connections: int = 0

    def __post_init__(self) -> None:
        self.arrived = threading.Condition(self.lock)

    async def handle_RCPT(
        self, server: SMTPServer, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        reply = await self._fault("RCPT")
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        reply = await self._fault("DATA")
        if reply:
            return reply
        login = session.auth_data.decode() if isinstance(session.auth_data, bytes) else None
        raw = envelope.original_content or envelope.content or b""
        received = ReceivedEmail(
            mail_from=envelope.mail_from or "",
            rcpt_tos=tuple(envelope.rcpt_tos),
            data=raw.encode() if isinstance(raw, str) else bytes(raw),
            monotonic=time.monotonic(),
            wall=time.time(),
            tls=session.ssl is not None,
            login=login,
        )
        with self.arrived:
            self.messages.append(received)
            self.arrived.notify_all()
        return "250 2.0.0 queued"

    async def _fault(self, stage: str) -> str | None:
        with self.lock:
            if not self.faults or self.faults[0].stage != stage:
                return None
            fault = self.faults.popleft()
        if fault.stall:
            await asyncio.sleep(fault.stall)
        return fault.reply


class SmtpPeer:
    """An aiosmtpd server on 127.0.0.1 and a free port; ``start()``/``stop()`` it."""

    def __init__(
        self,
        *,
        tls: str = "none",
        auth: tuple[str, str] | None = None,
        ca: trustme.CA | None = None,
        port: int | None = None,
    ) -> None:
        """``tls``: ``none``, ``starttls`` (required by the server) or ``implicit``.

        ``port`` reuses a port (to simulate a server restart); default: a free one.
        """
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.tls = tls
        self.credentials = auth
        self.handler = RecordingHandler()
        self.ca = ca or trustme.CA()
        server_context: ssl.SSLContext | None = None
        if tls != "none":
            server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.ca.issue_cert(self.host, "localhost").configure_cert(server_context)
        kwargs: dict[str, Any] = {}
        if tls == "starttls":
            kwargs.update(tls_context=server_context, require_starttls=True)
        elif tls == "implicit":
            kwargs.update(ssl_context=server_context)
        if auth is not None:
            kwargs.update(
                authenticator=self._authenticate,
                auth_required=True,
                # aiosmtpd only knows about STARTTLS here; implicit TLS is TLS already.
                auth_require_tls=tls == "starttls",
            )
        self.controller = Controller(
            self.handler, hostname=self.host, port=self.port, server_hostname="localhost", **kwargs
        )

    def client_tls_context(self) -> ssl.SSLContext:
        """A client context that trusts this server's test CA (and verifies host names)."""
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context

    def start(self) -> SmtpPeer:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    @property
    def messages(self) -> list[ReceivedEmail]:
        with self.handler.lock:
            return list(self.handler.messages)

    def fail_next(self, reply: str, *, count: int = 1, stage: str = "DATA") -> None:
        """Answer the next ``count`` transactions with ``reply`` (e.g. ``"451 4.3.0 busy"``)."""
        with self.handler.lock:
            self.handler.faults.extend(_Fault(reply, 0.0, stage) for _ in range(count))

    def stall_next(self, seconds: float, *, count: int = 1, stage: str = "DATA") -> None:
        """Wait ``seconds`` before answering the next ``count`` transactions (then accept)."""
        with self.handler.lock:
            self.handler.faults.extend(_Fault(None, seconds, stage) for _ in range(count))

    def wait_for(self, count: int, timeout: float = 5.0) -> list[ReceivedEmail]:
        """Block until ``count`` messages arrived (or fail after ``timeout``)."""
        with self.handler.arrived:
            ok = self.handler.arrived.wait_for(
                lambda: len(self.handler.messages) >= count, timeout=timeout
            )
            assert ok, f"expected {count} messages, got {len(self.handler.messages)}"
            return list(self.handler.messages)

    def _authenticate(
        self, server: SMTPServer, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if isinstance(data, LoginPassword) and self.credentials is not None:
            user, password = self.credentials
            if data.login == user.encode() and data.password == password.encode():
                return AuthResult(success=True, auth_data=data.login)
        return AuthResult(success=False, handled=False)
