"""Log lines are one JSON object each, including those of libraries using stdlib logging."""

from __future__ import annotations

import json
import logging

import pytest
import structlog

from pgnotify import logs


@pytest.fixture(autouse=True)
def _restore_logging() -> object:
    yield
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


def test_our_events_and_library_warnings_are_single_json_lines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure("json", "info")
    logs.get_logger(component="test").info("sent", count=2, ids=[1, 2])
    try:
        raise ConnectionResetError("peer went away")
    except ConnectionResetError:
        logging.getLogger("asyncpg.pool").warning("pool floor not restored", exc_info=True)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2
    ours, theirs = (json.loads(line) for line in lines)
    assert ours["event"] == "sent" and ours["ids"] == [1, 2] and ours["level"] == "info"
    assert theirs["event"] == "pool floor not restored"
    assert theirs["logger"] == "asyncpg.pool"
    assert "ConnectionResetError: peer went away" in theirs["exception"]


def test_debug_events_are_dropped_at_info_level(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("json", "info")
    logs.get_logger().debug("claimed", count=1)
    assert capsys.readouterr().err == ""
