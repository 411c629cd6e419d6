"""The health socket refuses what is not a short, well-formed request: 400, closed, quietly.

A client may send anything to the socket (a port scanner, a TLS handshake, a 70 KB line):
each gets ``400 Bad Request`` and a closed connection, nothing reaches the event loop's
exception handler (which is what writes a traceback into the daemon's log), and the next
client is served as usual.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from typing import Any

import pytest

from pgnotify.health import MAX_HEADERS, MAX_LINE, HealthServer

BAD_REQUESTS = {
    "a 70 KB request line": b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n",
    "a request line just over the limit": b"GET /health?" + b"x" * MAX_LINE + b" HTTP/1.1\r\n\r\n",
    "a 70 KB header": b"GET /health HTTP/1.1\r\nX-Big: " + b"b" * 70_000 + b"\r\n\r\n",
    "too many headers": b"GET /health HTTP/1.1\r\n" + b"X-A: 1\r\n" * (MAX_HEADERS + 1) + b"\r\n",
    "a word": b"nonsense\r\n\r\n",
    "no protocol version": b"GET /health\r\n\r\n",
    "an extra word": b"GET /health HTTP/1.1 please\r\n\r\n",
    "two spaces": b"GET  /health HTTP/1.1\r\n\r\n",
    "a TLS handshake": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32)) + b"\n",
    "a NUL in the target": b"GET /hea\x00lth HTTP/1.1\r\n\r\n",
    "a header cut short": b"GET /health HTTP/1.1\r\nHost: x",
}


@pytest.fixture
async def server() -> AsyncIterator[tuple[HealthServer, list[dict[str, Any]]]]:
    """A health server on a free port, and what reaches the loop's exception handler."""
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    health = HealthServer("127.0.0.1", 0, lambda: {"ok": True})
    await health.start()
    try:
        yield health, reported
    finally:
        await health.close()
        gc.collect()  # a handler task that died unretrieved is reported when collected
        await asyncio.sleep(0)
        loop.set_exception_handler(previous)


async def exchange(port: int, request: bytes) -> bytes:
    """Send ``request`` (then half-close) and read until the server closes, within 10 s."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(10):
            writer.write(request)
            await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
            return await reader.read()
    finally:
        writer.close()


@pytest.mark.parametrize("request_bytes", list(BAD_REQUESTS.values()), ids=list(BAD_REQUESTS))
async def test_a_bad_request_gets_400_and_a_closed_connection_and_no_traceback(
    server: tuple[HealthServer, list[dict[str, Any]]], request_bytes: bytes
) -> None:
    """Oversized and malformed requests are answered 400, the connection is closed (the
    read ends), and the event loop's exception handler hears nothing about it."""
    health, reported = server
    raw = await exchange(health.port, request_bytes)
    assert raw.startswith(b"HTTP/1.1 400 Bad Request\r\n"), raw[:80]
    assert b"Connection: close" in raw
    # The server is unharmed: the next client is served.
    assert (await exchange(health.port, b"GET /health HTTP/1.1\r\n\r\n")).startswith(
        b"HTTP/1.1 200 OK\r\n"
    )
    await health.close()
    gc.collect()
    await asyncio.sleep(0)
    assert reported == []


async def test_a_client_that_sends_nothing_gets_nothing_and_nothing_is_reported(
    server: tuple[HealthServer, list[dict[str, Any]]],
) -> None:
    """A connection opened and closed without a byte (a port check) is simply closed."""
    health, reported = server
    assert await exchange(health.port, b"") == b""
    await health.close()
    gc.collect()
    await asyncio.sleep(0)
    assert reported == []


async def test_a_request_line_and_headers_within_the_limits_are_served(
    server: tuple[HealthServer, list[dict[str, Any]]],
) -> None:
    """The limits refuse only what exceeds them: a long query and many headers still pass."""
    health, _ = server
    long_target = b"/health?" + b"q" * (MAX_LINE - 100)
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(MAX_HEADERS - 1))
    raw = await exchange(health.port, b"GET " + long_target + b" HTTP/1.1\r\n" + headers + b"\r\n")
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
