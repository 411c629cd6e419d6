"""Connections: psycopg for the CLI and migrations, asyncpg for the daemon.

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


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or exc.__class__.__name__


def check_dsn(dsn: str) -> None:
    """Reject a DATABASE_URL libpq cannot parse, with the reason."""
    try:
        conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise DatabaseUnavailable(
            f"DATABASE_URL is not a valid libpq URL: {_one_line(exc)}"
        ) from None


def connect_sync(dsn: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """Open a psycopg connection or raise ``DatabaseUnavailable`` naming the host."""
    check_dsn(dsn)
    kwargs.setdefault("connect_timeout", 10)
    try:
        return psycopg.connect(dsn, **kwargs)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(
            f"cannot connect to {describe_dsn(dsn)}: {_one_line(exc)}"
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
