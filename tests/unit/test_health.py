"""The health socket's answer: a complete, closed HTTP/1.1 response, and only for /health."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from pgnotify.health import HealthServer, http_response


def parse(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    return status, headers, body


def test_a_response_is_json_with_an_exact_length_and_closes_the_connection() -> None:
    status, headers, body = parse(http_response(200, {"ok": True, "in_flight": 3}))
    assert status == "HTTP/1.1 200 OK"
    assert headers["Content-Type"] == "application/json"
    assert headers["Connection"] == "close"
    assert headers["Cache-Control"] == "no-store"
    assert int(headers["Content-Length"]) == len(body)
    assert json.loads(body) == {"ok": True, "in_flight": 3}


def test_unavailable_is_503_and_values_json_does_not_know_are_written_as_text() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    status, _, body = parse(http_response(503, {"ok": False, "since": at}))
    assert status == "HTTP/1.1 503 Service Unavailable"
    assert json.loads(body) == {"ok": False, "since": str(at)}


def test_non_ascii_bodies_are_counted_in_bytes() -> None:
    _, headers, body = parse(http_response(200, {"reason": "contraseña rechazada"}))
    assert int(headers["Content-Length"]) == len(body)


async def ask(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    raw = await reader.read()
    writer.close()
    return raw


@pytest.mark.parametrize(
    ("request_line", "status"),
    [
        (b"GET /health HTTP/1.1", "HTTP/1.1 200 OK"),
        (b"GET /health?verbose=1 HTTP/1.1", "HTTP/1.1 200 OK"),
        (b"HEAD /health HTTP/1.1", "HTTP/1.1 200 OK"),
        (b"GET /metrics HTTP/1.1", "HTTP/1.1 404 Not Found"),
        (b"POST /health HTTP/1.1", "HTTP/1.1 405 Method Not Allowed"),
        (b"nonsense", "HTTP/1.1 400 Bad Request"),
    ],
)
async def test_only_get_health_is_served(request_line: bytes, status: str) -> None:
    server = HealthServer("127.0.0.1", 0, lambda: {"ok": True})
    await server.start()
    try:
        raw = await ask(server.port, request_line + b"\r\nHost: x\r\n\r\n")
    finally:
        await server.close()
    assert parse(raw)[0] == status


async def test_the_snapshot_decides_between_200_and_503_on_every_request() -> None:
    state: dict[str, Any] = {"ok": True}
    server = HealthServer("127.0.0.1", 0, lambda: dict(state))
    await server.start()
    try:
        first = parse(await ask(server.port, b"GET /health HTTP/1.1\r\n\r\n"))
        state["ok"] = False
        second = parse(await ask(server.port, b"GET /health HTTP/1.1\r\n\r\n"))
    finally:
        await server.close()
    assert first[0] == "HTTP/1.1 200 OK"
    assert second[0] == "HTTP/1.1 503 Service Unavailable"
    assert json.loads(second[2]) == {"ok": False}
