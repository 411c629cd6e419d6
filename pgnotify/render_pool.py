"""Shop templates render here: in worker processes, under a time and a memory budget.

A shop's templates are written by the shop, so they are untrusted (CONTRACT §5): a
``{% for %}`` over ``range(100000)`` twice, or ``'x' * 3000000000``, must fail its own
notification and nothing else. Rendering them on the event loop would freeze every worker,
the health socket, the LISTEN probe and the watchdog; rendering them in a thread would
still share the daemon's memory and its GIL. So they render in a few separate processes
(``python -m pgnotify.render_pool``), each with an address-space limit
(``NOTIFICATION_RENDER_MEMORY_MB``, ``RLIMIT_AS``); a render that takes longer than
``NOTIFICATION_RENDER_TIMEOUT`` seconds has its process killed, and the next render starts
a fresh one. Either way the notification fails permanently, naming the template's files.

The worker processes start on first use (a daemon whose shops customise nothing never
starts one) and compile each template once, like the daemon does. Shipped and operator
templates never come here: ``Composer`` renders them inline, where they cost 25–30 µs.

Each request is one template part: one round trip over a socket pair, a pickled context
out and the text back. The waiting happens in a small thread pool of the same size, so an
``await`` on the event loop costs the loop nothing while a render runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import resource
import signal
import socket
import subprocess
import sys
import weakref
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from pgnotify.errors import PermanentError, TransientError

POOL_SIZE = 2
"""Worker processes (and waiting threads): enough that one slow shop leaves room for others."""

MAX_RENDERED_CHARS = 1_000_000
"""A rendered part longer than this fails: no message needs it, and it would land in the
daemon's memory."""

# How long a new worker may take to import jinja2 and say it is ready (a loaded machine).
_START_TIMEOUT = 30.0


@dataclass(frozen=True)
class ShopSource:
    """Where an untrusted render comes from, for the error that names it."""

    label: str
    """The template as ``TemplateRenderer`` names it: kind/part, locale, shop."""
    shop_id: str
    """The shop whose folder the render reads."""
    files: tuple[str, ...]
    """The shop-supplied files (absolute paths) the render reads."""

    def error(self, reason: str) -> PermanentError:
        """The permanent error of this render: the reason, then the files."""
        return PermanentError(f"{self.label}: {reason} [{', '.join(self.files)}]")


class _Process:
    """One worker process and our end of its socket pair."""

    def __init__(self, roots: Sequence[Path], timeout: float, memory_mb: int) -> None:
        ours, theirs = socket.socketpair()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pgnotify.render_pool", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                close_fds=True,
            )
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        self.conn = Connection(ours.detach())
        try:
            self.conn.send(([str(r) for r in roots], timeout, memory_mb))
            if not self.conn.poll(_START_TIMEOUT):
                raise OSError(f"no answer within {_START_TIMEOUT:g}s")
            self.conn.recv()  # "ready"
        except (OSError, EOFError):
            self.kill()
            raise

    def kill(self) -> int:
        """Kill the process (if it still runs) and reap it; returns its exit status."""
        with contextlib.suppress(OSError):
            self.conn.close()
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        return self.proc.wait()


def _kill_all(processes: set[_Process]) -> None:
    for process in list(processes):
        process.kill()
    processes.clear()


class RenderPool:
    """A few worker processes rendering untrusted templates under a time and memory budget.

    ``roots`` are the template roots, as ``TemplateRenderer`` searches them. Safe to use
    from the event loop (``render``) and from plain code (``render_blocking``); both wait
    their turn when every worker is busy.
    """

    def __init__(
        self, roots: Sequence[Path], *, timeout: float, memory_mb: int, size: int = POOL_SIZE
    ) -> None:
        self.roots = tuple(roots)
        self.timeout = timeout
        self.memory_mb = memory_mb
        self.size = size
        # A slot per worker: None until started, or after its process was killed.
        self._idle: queue.SimpleQueue[_Process | None] = queue.SimpleQueue()
        for _ in range(size):
            self._idle.put(None)
        self._live: set[_Process] = set()
        self._executor: ThreadPoolExecutor | None = None
        # Whatever happens to the pool object, its processes do not outlive it.
        self._finalizer = weakref.finalize(self, _kill_all, self._live)

    @property
    def pids(self) -> frozenset[int]:
        """The worker processes running now (tests watch them being replaced)."""
        return frozenset(p.proc.pid for p in list(self._live))  # list(): one step under the GIL

    def close(self) -> None:
        """Kill every worker process; a later render starts new ones."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        self._finalizer()
        self._finalizer = weakref.finalize(self, _kill_all, self._live)

    async def render(
        self,
        source: ShopSource,
        kind: str,
        part: str,
        context: Mapping[str, Any],
        *,
        locale: str,
        shop_id: str,
    ) -> str:
        """``render_blocking`` without blocking the event loop."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.size, thread_name_prefix="render-pool")
        request = ("render", kind, part, locale, shop_id, dict(context))
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, source, request)

    def render_blocking(
        self,
        source: ShopSource,
        kind: str,
        part: str,
        context: Mapping[str, Any],
        *,
        locale: str,
        shop_id: str,
    ) -> str:
        """Render ``<kind>/<part>`` for the shop and locale in a worker process.

        Returns what ``TemplateRenderer.render`` returns there. Raises ``PermanentError``
        naming ``source`` when the template fails, runs out of time or memory, and
        ``TransientError`` when no worker could be started or one was killed from outside
        (a service stop).
        """
        return self._call(source, ("render", kind, part, locale, shop_id, dict(context)))

    def compile_blocking(self, source: ShopSource, name: str, *, locale: str, shop_id: str) -> None:
        """Compile one of a shop's files in a worker (``pgnotify check``): compiling runs
        the template's constant expressions, so it gets the same budget as a render."""
        self._call(source, ("compile", name, locale, shop_id))

    def _call(self, source: ShopSource, request: tuple[Any, ...]) -> str:
        process = self._idle.get()
        answered = False
        try:
            if process is not None and process.proc.poll() is not None:
                self._retire(process)  # killed meanwhile (close(), or from outside)
                process = None
            if process is None:
                try:
                    process = _Process(self.roots, self.timeout, self.memory_mb)
                except (OSError, EOFError) as exc:
                    raise TransientError(f"cannot start a template render worker: {exc}") from exc
                self._live.add(process)
            status, value = self._exchange(process, source, request)
            answered = True
        finally:
            if process is not None and (not answered or process.proc.poll() is not None):
                # Killed, quit, or its answer is still due (an interruption here): its
                # slot starts a fresh process on the next render.
                self._retire(process)
                process = None
            self._idle.put(process)
        if status == "ok":
            return str(value)
        if status == "error":  # the renderer's own error, which names the template
            raise PermanentError(f"{value} [{', '.join(source.files)}]")
        raise source.error(str(value))

    def _exchange(
        self, process: _Process, source: ShopSource, request: tuple[Any, ...]
    ) -> tuple[str, Any]:
        """Send one request and wait for its answer, for the timeout at most.

        A process that runs out of time is killed; one that ran out of memory has quit
        after answering. Either fails the render, and ``_call`` retires its process.
        """
        try:
            process.conn.send(request)
            answered = process.conn.poll(self.timeout)
            reply: tuple[str, Any] = process.conn.recv() if answered else ("timeout", None)
        except (OSError, EOFError):
            status = process.kill()
            if status in (-signal.SIGTERM, -signal.SIGKILL):
                # Killed from outside (a service stop, the OOM killer): try again later.
                raise TransientError(
                    f"{source.label}: the render worker was killed (signal {-status})"
                ) from None
            raise source.error(f"the render worker died (exit status {status})") from None
        if reply[0] == "timeout":
            process.kill()
            raise source.error(
                f"took longer than {self.timeout:g}s (NOTIFICATION_RENDER_TIMEOUT);"
                " the render was stopped"
            )
        if reply[0] == "memory":
            process.kill()  # it quits by itself; this reaps it
            raise source.error(
                f"needed more than {self.memory_mb} MB (NOTIFICATION_RENDER_MEMORY_MB);"
                " the render was stopped"
            )
        return reply

    def _retire(self, process: _Process) -> None:
        process.kill()
        self._live.discard(process)


# -- the worker process -------------------------------------------------------------------


def _serve(conn: Connection) -> None:
    """Answer render and compile requests until the daemon closes its end."""
    # Imported here: the daemon's side of this module does not need jinja2's sandbox.
    from pgnotify.templates import TemplateRenderer

    roots, timeout, memory_mb = conn.recv()
    renderer = TemplateRenderer([Path(r) for r in roots])
    limit = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    conn.send(("ready", os.getpid()))
    _, cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        # A backstop should the daemon die while a render loops: the kernel stops this
        # process a little after the daemon would have (SIGXCPU), instead of never.
        usage = resource.getrusage(resource.RUSAGE_SELF)
        budget = int(usage.ru_utime + usage.ru_stime + timeout) + 2
        if cpu_hard == resource.RLIM_INFINITY or budget < cpu_hard:
            resource.setrlimit(resource.RLIMIT_CPU, (budget, cpu_hard))
        reply = _answer(renderer, request)
        try:
            conn.send(reply)
        except MemoryError:
            conn.send(("memory", None))
            return
        if reply[0] == "memory":
            return  # a fresh process is cheaper than trusting a heap that ran out


def _answer(renderer: Any, request: tuple[Any, ...]) -> tuple[str, Any]:
    from pgnotify.errors import PgnotifyError

    try:
        if request[0] == "compile":
            _, name, locale, shop_id = request
            renderer.compile_file(name, locale=locale, shop_id=shop_id)
            return ("ok", "")
        _, kind, part, locale, shop_id, context = request
        text = renderer.render(kind, part, context, locale=locale, shop_id=shop_id)
        if len(text) > MAX_RENDERED_CHARS:
            return ("failed", f"rendered more than {MAX_RENDERED_CHARS:,} characters")
        return ("ok", text)
    except MemoryError:
        return ("memory", None)
    except PgnotifyError as exc:
        if isinstance(exc.__cause__, MemoryError):
            return ("memory", None)
        return ("error", str(exc))
    except Exception as exc:
        # Compiling can fail in ways jinja2 does not wrap (RecursionError): the template's
        # fault, reported like any other.
        return ("failed", f"{type(exc).__name__}: {exc}")


if __name__ == "__main__":
    # Ctrl-C in a terminal reaches the whole process group: the daemon handles it, and
    # stops us by closing the socket.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _serve(Connection(int(sys.argv[1])))
