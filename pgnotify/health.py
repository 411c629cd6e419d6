"""The health socket: ``GET /health`` answered by a few lines of asyncio, nothing else.

200 with a small JSON body when the listener and the pool are up, 503 otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


def http_response(status: int, body: dict[str, Any]) -> bytes:
    payload = json.dumps(body, default=str).encode()
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}\r\n"
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
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        sock = self._server.sockets[0]
        self.port = int(sock.getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                request = await reader.readline()
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
            parts = request.decode("latin-1").split()
            if len(parts) < 2:
                response = http_response(405, {"error": "bad request"})
            elif parts[0] not in ("GET", "HEAD"):
                response = http_response(405, {"error": "only GET /health"})
            elif parts[1].split("?")[0] != "/health":
                response = http_response(404, {"error": "only GET /health"})
            else:
                snap = self._snapshot()
                response = http_response(200 if snap.get("ok") else 503, snap)
            writer.write(response)
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
