"""A TCP proxy for fault tests whose path can go half-open: nothing crosses, nothing closes.

``TcpProxy`` listens on 127.0.0.1 (a free port) and forwards every accepted connection to
``target``, on its own loop in its own thread, so it keeps forwarding whatever the test's
loop is doing (sync psycopg calls block it).

``stop_forwarding()`` models a path that dies silently under established connections (a
NAT or firewall dropping its state, a VM paused, a cable pulled): from then on nothing
crosses in either direction and nothing is closed, so neither end learns anything from
TCP. Bytes sent meanwhile are read and dropped (the window stays open, no RST, no FIN),
and those connections stay dead for good, because the far side of a real half-open
connection has lost its state. A close by either end reaches the other only once the
path heals, as an RST would.

Connections accepted while stopped are held, as retransmitted SYNs would be, and go
through once ``resume_forwarding()`` is called; connections made after that forward
normally.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.peers.smtp import free_port


@dataclass(eq=False)
class _Link:
    """One proxied connection; ``dead`` once the path went half-open under it."""

    dead: bool = False
    writers: list[asyncio.StreamWriter] = field(default_factory=list)


class TcpProxy:
    """Forward 127.0.0.1:``port`` to ``target``; ``start()``/``stop()`` it."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.host = "127.0.0.1"
        self.port = free_port()
        self.accepted = 0
        self._upstream_ports: list[int] = []
        self._lock = threading.Lock()
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._open: asyncio.Event | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def upstream_ports(self) -> list[int]:
        """Local ports of the proxy's connections to the target, oldest first.

        Postgres shows them as ``pg_stat_activity.client_port``: a backend whose port is in
        this list was reached through the proxy.
        """
        with self._lock:
            return list(self._upstream_ports)

    def start(self) -> TcpProxy:
        self._thread = threading.Thread(target=self._serve, name="tcp-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("tcp proxy did not start")
        return self

    def stop(self) -> None:
        """Close the listening socket and every connection, then end the thread."""
        if self._loop is not None and self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def stop_forwarding(self) -> None:
        """Go half-open: every current connection is dead from now on, new ones wait."""
        self._call(self._go_half_open)

    def resume_forwarding(self) -> None:
        """Heal the path: held and new connections forward; dead ones stay dead."""
        self._call(self._heal)

    # -- on the proxy's loop ------------------------------------------------------------
    def _call(self, fn: Callable[[], None]) -> None:
        assert self._loop is not None

        async def run() -> None:
            fn()

        asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def _go_half_open(self) -> None:
        assert self._open is not None
        self._open.clear()
        for link in self._links:
            link.dead = True

    def _heal(self) -> None:
        assert self._open is not None
        self._open.set()

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._open = asyncio.Event()
        self._open.set()
        self._server = loop.run_until_complete(
            asyncio.start_server(self._accept, self.host, self.port)
        )
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        assert self._open is not None
        self.accepted += 1
        link = _Link(writers=[client_w])
        # Registered before any await, so a stop_forwarding() from here on kills it too.
        self._links.add(link)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._open.wait()
            try:
                upstream_r, upstream_w = await asyncio.open_connection(*self.target)
            except OSError:
                client_w.close()
                return
            link.writers.append(upstream_w)
            with self._lock:
                self._upstream_ports.append(int(upstream_w.get_extra_info("sockname")[1]))
            await asyncio.gather(
                self._pump(link, client_r, upstream_w), self._pump(link, upstream_r, client_w)
            )
        finally:
            self._links.discard(link)
            self._tasks.discard(task)
            for writer in link.writers:
                writer.close()

    async def _pump(
        self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Copy one direction until EOF; on a dead link, read and drop instead."""
        assert self._open is not None
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if link.dead:
                    continue
                writer.write(data)
                await writer.drain()
        if link.dead:
            # On a dead path the other end hears of this close only once it heals.
            await self._open.wait()
        writer.close()
