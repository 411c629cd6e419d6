"""Fixtures of the fault suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.history import History


@pytest.fixture
def history(clean_db: str) -> Iterator[History]:
    """Every change of every queue row during the test (see ``history.py``)."""
    with History.recording(clean_db) as recorded:
        yield recorded
