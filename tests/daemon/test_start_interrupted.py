"""A stop that arrives while the daemon is still connecting ends the start: no loop runs."""

from __future__ import annotations

import asyncio
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgnotify.daemon import Daemon
from tests.daemon.harness import make_settings, wait_until
from tests.faults.proxy import TcpProxy


async def test_a_stop_during_the_first_connect_starts_no_loop(
    clean_db: str, tmp_path: Path
) -> None:
    """The pool's first connection is held; the daemon is stopped; then the connection goes
    through. The daemon must close that pool and return, never report READY or claim."""
    info = conninfo_to_dict(clean_db)
    proxy = TcpProxy(str(info.get("host") or "127.0.0.1"), int(info.get("port") or 5432)).start()
    proxy.stop_forwarding()
    try:
        info.update(host=proxy.host, port=str(proxy.port))
        settings = make_settings(
            make_conninfo("", **info),  # type: ignore[arg-type]
            tmp_path,
            NOTIFICATION_DB_TIMEOUT=20.0,  # the held connect must not time out meanwhile
        )
        daemon = Daemon(settings)
        task = asyncio.create_task(daemon.run(install_signals=False))
        await wait_until(lambda: proxy.accepted > 0, timeout=15)
        daemon.stop()
        proxy.resume_forwarding()  # create_pool now completes, after the stop
        code = await asyncio.wait_for(task, 30)
    finally:
        proxy.stop()
    assert code == 0
    assert daemon.rt is None, "the daemon built its runtime after a stop"
    assert not daemon.ready.is_set(), "the daemon reported READY after a stop"
