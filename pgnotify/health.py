"""The health socket: ``GET /health`` answered by a few lines of asyncio, nothing else.

200 with a small JSON body when the listener and the pool are up, 503 otherwise. Anything
that is not a short, well-formed HTTP/1.x request (a request line or header over 8 KiB,
more than 100 header lines, a request line that is not ``METHOD target HTTP/x.y`` in
printable ASCII, a header line cut short) gets 400 and a closed connection; nothing a
client sends can raise past the handler, so nothing reaches the log as a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from pgnotify.errors import SettingsError

MAX_LINE = 8192  # bytes of one request or header line (the stream reader's buffer limit)
MAX_HEADERS = 100
_DISCARD_BYTES = 1 << 20  # read at most this much of an oversized request before closing
_REQUEST_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+) ([!-~]+) HTTP/\d\.\d\r?\n")


class BadRequest(Exception):
    """The client sent something that is not a short, well-formed HTTP/1.x request."""


async def read_request(reader: asyncio.StreamReader) -> tuple[str, str] | None:
    """The method and target of one request, its headers read and dropped; ``None`` when
    the client closed before sending a line, ``BadRequest`` for what the module refuses
    (its docstring lists it)."""
    try:
        line = await reader.readline()
        if not line:
            return None
        match = _REQUEST_LINE.fullmatch(line)
        if match is None:
            raise BadRequest("malformed request line")
        for _ in range(MAX_HEADERS + 1):
            header = await reader.readline()
            if header in (b"\r\n", b"\n", b""):  # the blank line, or the client's EOF
                return match.group(1).decode("ascii"), match.group(2).decode("latin-1")
            if not header.endswith(b"\n"):
                raise BadRequest("connection closed inside a header line")
    except (ValueError, asyncio.LimitOverrunError) as exc:  # ValueError: line over the limit
        raise BadRequest("request line or header too long") from exc
    raise BadRequest("too many header lines")


def http_response(status: int, body: dict[str, Any]) -> bytes:
    payload = json.dumps(body, default=str).encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + payload


class HealthServer:
    """Serves ``snapshot()`` as JSON; ``snapshot()['ok']`` decides 200 or 503."""

    def __init__(self, host: str, port: int, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.host, self.port = host, port
        self._snapshot = snapshot
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Listen; an address that cannot be bound is a bad setting (``SettingsError``)."""
        try:
            self._server = await asyncio.start_server(
                self._handle, self.host, self.port, limit=MAX_LINE
            )
        except OSError as exc:  # in use, not an address of this host, unresolvable name
            reason = exc.strerror or str(exc)
            raise SettingsError(
                f"NOTIFICATION_HEALTH_ADDR: cannot listen on {self.host}:{self.port}: {reason}"
            ) from None
        self.port = int(self._server.sockets[0].getsockname()[1])  # the one bound, if 0

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                async with asyncio.timeout(5):
                    request = await read_request(reader)
            except BadRequest as exc:
                await self._refuse(reader, writer, str(exc))
                return
            if request is None:
                return
            method, target = request
            if method not in ("GET", "HEAD"):
                response = http_response(405, {"error": "only GET /health"})
            elif target.split("?")[0] != "/health":
                response = http_response(404, {"error": "only GET /health"})
            else:
                snap = self._snapshot()
                response = http_response(200 if snap.get("ok") else 503, snap)
            writer.write(response)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @staticmethod
    async def _refuse(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, reason: str
    ) -> None:
        """Answer 400, then read and drop what the client is still sending, briefly.

        Closing a socket with unread input sends a reset, which can destroy the answer
        before the client reads it; so the rest of the request is drained first, up to
        ``_DISCARD_BYTES`` or one second, whichever comes first.
        """
        writer.write(http_response(400, {"error": reason}))
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(1):
                await writer.drain()
                if writer.can_write_eof():
                    writer.write_eof()
                discarded = 0
                while discarded < _DISCARD_BYTES:
                    chunk = await reader.read(65536)
                    if not chunk:
                        break
                    discarded += len(chunk)
