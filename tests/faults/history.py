"""Every change of every queue row while a test runs, recorded by a trigger.

Polling the table would miss states that last milliseconds. A row trigger records each
claim, outcome and rescue with the database's own clock, so a test can check the retry
policy exactly: how many attempts each row had, what each one ended with, how long the
row then waited, and when the next claim came. The trigger lives in its own schema,
created for one test and dropped after it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

SCHEMA = "pgnotify_faults"

INSTALL = f"""
drop schema if exists {SCHEMA} cascade;
create schema {SCHEMA};
create table {SCHEMA}.transitions (
    seq        bigserial primary key,
    id         bigint not null,
    status     text not null,
    attempts   int not null,
    last_error text,
    delay      float8 not null,      -- run_at - updated_at: the wait before the next claim
    at         timestamptz not null  -- updated_at: the changing transaction's now()
);
create function {SCHEMA}.record_transition() returns trigger language plpgsql as $$
begin
    insert into {SCHEMA}.transitions (id, status, attempts, last_error, delay, at)
    values (new.id, new.status, new.attempts, new.last_error,
            extract(epoch from new.run_at - new.updated_at)::float8, new.updated_at);
    return null;
end $$;
create trigger record_transition after update on pgnotify.notifications
    for each row execute function {SCHEMA}.record_transition();
"""


@dataclass(frozen=True)
class Attempt:
    """One claim of a row and what came of it.

    ``status`` is the row's state after the attempt (``pending`` for a retry, or
    ``sending`` if nothing was recorded: the daemon died or lost the database), and
    ``delay`` the seconds the row was then told to wait.
    """

    number: int
    claimed_at: datetime
    status: str
    error: str | None
    delay: float
    ended_at: datetime | None


class History:
    """Read the transitions recorded so far (``recording`` installs the trigger)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    @classmethod
    @contextmanager
    def recording(cls, dsn: str) -> Iterator[History]:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(INSTALL)
        try:
            yield cls(dsn)
        finally:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f"drop schema if exists {SCHEMA} cascade")

    def _rows(self, ids: list[int]) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return conn.execute(
                f"select id, status, attempts, last_error, delay, at from {SCHEMA}.transitions"
                " where id = any(%s) order by seq",
                (ids,),
            ).fetchall()

    def statuses(self, ids: list[int]) -> dict[int, list[str]]:
        """Each row's status after each of its updates, in order: every write it took."""
        out: dict[int, list[str]] = {i: [] for i in ids}
        for row_id, status, *_ in self._rows(ids):
            out[row_id].append(status)
        return out

    def attempts(self, ids: list[int]) -> dict[int, list[Attempt]]:
        """Each row's attempts in order; an update that is not a claim ends the open one."""
        out: dict[int, list[Attempt]] = {i: [] for i in ids}
        for row_id, status, attempts, last_error, delay, at in self._rows(ids):
            mine = out[row_id]
            if status == "sending":
                mine.append(Attempt(attempts, at, "sending", None, 0.0, None))
            elif mine and mine[-1].ended_at is None:
                claim = mine[-1]
                mine[-1] = Attempt(claim.number, claim.claimed_at, status, last_error, delay, at)
        return out

    def failures_reach(self, ids: list[int], n: int) -> bool:
        """True once every row in ``ids`` has ended at least ``n`` attempts in a retry."""
        return all(
            sum(a.status == "pending" for a in attempts) >= n
            for attempts in self.attempts(ids).values()
        )
