"""Apply ``sql/NNN_*.sql`` in order, each file once, each in its own transaction.

A session-level advisory lock serialises concurrent ``pgnotify migrate`` runs (two
deploys at once must not interleave), and ``pgnotify.schema_migrations`` records what ran
with a checksum, so an edited, already-applied file is refused instead of silently ignored.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

from pgnotify.db import connect_sync
from pgnotify.resources import sql_dir

_FILE = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
# An arbitrary, fixed key: every pgnotify migrate run contends for the same lock.
_LOCK_KEY = 0x70676E6F74696679 & 0x7FFFFFFFFFFFFFFF


class MigrationError(Exception):
    """A migration could not be applied, or the applied history does not match ``sql/``."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(directory: Path | None = None) -> list[Migration]:
    """All migrations in version order (the packaged ``sql/`` by default).

    Refuses two files with one number, and a folder with none: an install without its SQL
    must fail loudly, never report "up to date".
    """
    directory = directory or sql_dir()
    found: dict[str, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE.match(path.name)
        if not match:
            continue
        version = match.group(1)
        if version in found:
            raise MigrationError(f"two migrations numbered {version}: {path.name}")
        found[version] = Migration(version, path.name, path.read_text(encoding="utf-8"))
    if not found:
        raise MigrationError(f"no migrations (NNN_name.sql) in {directory}")
    return [found[v] for v in sorted(found)]


def migrate(dsn: str, directory: Path | None = None) -> list[str]:
    """Apply pending migrations; return the names applied (empty when up to date)."""
    migrations = discover(directory)
    applied_now: list[str] = []
    with connect_sync(dsn, autocommit=True) as conn:
        conn.execute("select pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            conn.execute("create schema if not exists pgnotify")
            conn.execute(
                "create table if not exists pgnotify.schema_migrations ("
                " version text primary key, name text not null, checksum text not null,"
                " applied_at timestamptz not null default now())"
            )
            done = {
                row[0]: (row[1], row[2])
                for row in conn.execute(
                    "select version, name, checksum from pgnotify.schema_migrations"
                )
            }
            for m in migrations:
                if m.version in done:
                    name, checksum = done[m.version]
                    if checksum != m.checksum:
                        raise MigrationError(
                            f"{m.name} was changed after it was applied (as {name}); "
                            "add a new numbered file instead of editing a landed one"
                        )
                    continue
                try:
                    with conn.transaction():
                        conn.execute(m.sql)
                        conn.execute(
                            "insert into pgnotify.schema_migrations (version, name, checksum)"
                            " values (%s, %s, %s)",
                            (m.version, m.name, m.checksum),
                        )
                except psycopg.Error as exc:
                    raise MigrationError(f"{m.name}: {exc}".strip()) from exc
                applied_now.append(m.name)
        finally:
            if not conn.closed:
                conn.execute("select pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied_now
