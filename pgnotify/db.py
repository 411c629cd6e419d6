"""The database edge: psycopg for the CLI and migrations, asyncpg for the daemon.

It owns how connections are made (the daemon's pool, the CLI's connections), which
errors mean "the database is away" (``DB_ERRORS``), and how such an error is described.
Connection failures become ``DatabaseUnavailable`` with a one-line message naming the
host, never a traceback, and never the password.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, urlencode

import asyncpg
import psycopg
from psycopg.conninfo import conninfo_to_dict

from pgnotify.errors import DatabaseUnavailable
from pgnotify.settings import Settings
from pgnotify.text import one_line

DB_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    # asyncpg raises this when a connection the server terminated mid-operation is used
    # or reset again ("cannot switch to state 15; another operation (2) is in progress",
    # MagicStack/asyncpg#784): a lost connection like any other, never a reason to die.
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)
"""What the daemon's loops catch as "the database is away": they back off and go on."""


def describe_dsn(dsn: str) -> str:
    """``user@host:port/dbname`` of a libpq URL or keyword string, without the password."""
    try:
        info = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "an unparsable DATABASE_URL"
    host = str(info.get("host") or "localhost (socket)")
    port = str(info.get("port") or 5432)
    user = str(info.get("user") or "")
    db = str(info.get("dbname") or "")
    return f"{user + '@' if user else ''}{host}:{port}/{db}"


def check_dsn(dsn: str) -> None:
    """Reject a DATABASE_URL libpq cannot parse, with the reason."""
    try:
        conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise DatabaseUnavailable(
            f"DATABASE_URL is not a valid libpq URL: {one_line(str(exc))}"
        ) from None


def connect_sync(dsn: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """Open a psycopg connection or raise ``DatabaseUnavailable`` naming the host."""
    check_dsn(dsn)
    kwargs.setdefault("connect_timeout", 10)
    try:
        return psycopg.connect(dsn, **kwargs)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(
            f"cannot connect to {describe_dsn(dsn)}: {one_line(str(exc))}"
        ) from None


def as_url(dsn: str) -> str:
    """A ``postgresql://`` URL for asyncpg, which does not read libpq keyword strings."""
    if dsn.startswith(("postgresql://", "postgres://")):
        return dsn
    check_dsn(dsn)
    info = {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}
    user = quote(info.pop("user", ""), safe="")
    password = quote(info.pop("password", ""), safe="")
    host = info.pop("host", "")
    port = info.pop("port", "")
    dbname = quote(info.pop("dbname", ""), safe="")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    netloc = host if "/" not in host else ""
    if "/" in host:  # a Unix socket directory travels as a query parameter
        info["host"] = host
    if port:
        netloc += f":{port}"
    query = urlencode(info)
    return f"postgresql://{auth}{netloc}/{dbname}" + (f"?{query}" if query else "")


async def init_connection(conn: asyncpg.Connection) -> None:
    """Set up an asyncpg connection of the daemon: JSON columns arrive as Python values."""
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def keep_session(conn: asyncpg.Connection) -> None:
    """Pool release without asyncpg's reset query (``RESET ALL; UNLISTEN *; ...``).

    The daemon's pooled connections never LISTEN, lock or SET anything, and asyncpg still
    rolls back a transaction left open; the reset query only cost a round trip (~0.1 ms)
    on every release, two or three times per batch.
    """


async def create_pool(settings: Settings) -> asyncpg.Pool:
    """The daemon's pool: one connection per worker and three for the maintenance loops."""
    pool: asyncpg.Pool = await asyncpg.create_pool(
        settings.asyncpg_url,
        min_size=1,
        max_size=settings.NOTIFICATION_WORKERS + 3,
        init=init_connection,
        reset=keep_session,
        command_timeout=settings.NOTIFICATION_DB_TIMEOUT,
        timeout=settings.NOTIFICATION_DB_TIMEOUT,
        statement_cache_size=0 if settings.DATABASE_PGBOUNCER else 100,
        server_settings={
            "application_name": "pgnotify",
            "timezone": "UTC",
            # asyncpg prepares every statement; after five runs Postgres may switch to a
            # generic plan, and the claim's generic plan scans the whole queue (measured:
            # 11.6 ms against 1.4 ms). Our statements are few and cheap to plan: always
            # plan for the values.
            "plan_cache_mode": "force_custom_plan",
        },
    )
    return pool
