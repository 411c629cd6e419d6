"""The database edge: psycopg for the CLI and migrations, asyncpg for the daemon.

It owns how connections are made, which errors mean "the database is away" (``DB_ERRORS``)
or "this configuration cannot work" (``DB_CONFIGURATION_ERRORS``), and what a
``DATABASE_URL`` must be (``dsn_problem``), where it points (``describe_dsn``) and which of
its parts are secret (``dsn_secrets``). Connection failures become ``DatabaseUnavailable``
with a one-line message naming the host, never a traceback, and never the password; the
error itself is described by ``text.describe_error``, the one description (and redaction)
of every error pgnotify shows.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import quote, urlencode

import asyncpg
import psycopg
from psycopg.conninfo import conninfo_to_dict

from pgnotify.errors import DatabaseUnavailable
from pgnotify.settings import Settings
from pgnotify.text import one_line, redact

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


def is_database_away(exc: BaseException) -> bool:
    """Is the database away or in trouble (the connection lost or timed out, the server
    shutting down or out of resources, a serialization failure, an idle transaction cut
    off), rather than a statement failing on what it was given (a value out of range, a
    unique key, an application's trigger)? The same statement succeeds later after the
    first kind; after the second it fails again over the same rows."""
    if not isinstance(exc, asyncpg.PostgresError):
        return True  # asyncpg's InterfaceError, OSError, TimeoutError: no statement ran
    state = str(exc.sqlstate or "")
    return state[:2] in ("08", "40", "53", "57", "58") or state == "25P03"


DB_CONFIGURATION_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.InvalidPasswordError,
    asyncpg.InvalidAuthorizationSpecificationError,  # no such role, NOLOGIN, pg_hba
    asyncpg.InsufficientPrivilegeError,
    asyncpg.ClientConfigurationError,  # a URL option asyncpg refuses (sslmode=bogus)
)
"""What no retry can fix: the daemon stops at start (exit 2) instead of waiting forever."""

# libpq quotes the piece of the URL it stumbled on, which may be the password: a parse
# error is shown without any quoted piece longer than one character (``"="`` stays).
_QUOTED = re.compile(r'"([^"]*)"')
_KEYWORD_PASSWORD = re.compile(r"(?:^|\s)password\s*=\s*('(?:[^'\\]|\\.)*'?|\S+)")
_QUERY_PASSWORD = re.compile(r"[?&]password=([^&#]*)")


def _userinfo(dsn: str) -> list[str]:
    _, scheme, rest = dsn.partition("://")
    return [rest.rpartition("@")[0]] if scheme else []


def dsn_secrets(dsn: str) -> list[str]:
    """The password(s) of a URL or keyword string, found without parsing it with libpq.

    Works on strings libpq refuses, so their error messages can be redacted too. For a
    URL it is generous: everything between ``://`` and the last ``@`` is user-info.
    """
    found = [userinfo.partition(":")[2] for userinfo in _userinfo(dsn)]
    found += _QUERY_PASSWORD.findall(dsn.partition("://")[2])
    for value in _KEYWORD_PASSWORD.findall(dsn):
        if value.startswith("'"):
            value = re.sub(r"\\(.)", r"\1", value.strip("'"))
        found.append(value)
    return [v for v in found if v]


def _hide_quoted(match: re.Match[str]) -> str:
    return match.group(0) if len(match.group(1)) <= 1 else '"…"'


def dsn_problem(dsn: str) -> str | None:
    """Why libpq cannot use ``dsn`` (one line, no password, no user-info), or None."""
    try:
        info = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        reason = _QUOTED.sub(_hide_quoted, one_line(str(exc)))
        return "is not a valid libpq URL: " + redact(reason, [*dsn_secrets(dsn), *_userinfo(dsn)])
    for port in str(info.get("port") or "").split(","):
        # Not echoed: a password with an unescaped "/" is read by libpq as host:port.
        if port and not (port.isdigit() and 1 <= int(port) <= 65535):
            return "has a port that is not a number from 1 to 65535"
    return None


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
    return redact(f"{user + '@' if user else ''}{host}:{port}/{db}", dsn_secrets(dsn))


def check_dsn(dsn: str) -> None:
    """Reject a ``DATABASE_URL`` libpq cannot use (``dsn_problem``)."""
    if problem := dsn_problem(dsn):
        raise DatabaseUnavailable(f"DATABASE_URL {problem}")


def connect_sync(dsn: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """Open a psycopg connection or raise ``DatabaseUnavailable`` naming the host."""
    check_dsn(dsn)
    kwargs.setdefault("connect_timeout", 10)
    try:
        return psycopg.connect(dsn, **kwargs)
    except psycopg.OperationalError as exc:
        reason = redact(one_line(str(exc)), dsn_secrets(dsn))
        raise DatabaseUnavailable(f"cannot connect to {describe_dsn(dsn)}: {reason}") from None


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
    """The daemon's pool: one connection per worker and three for the maintenance loops.

    Nothing it sends depends on session state, so ``DATABASE_URL`` may go through a pooler
    in transaction mode (``DATABASE_PGBOUNCER``): every statement runs in its own
    transaction or inside an explicit one, times travel as ``timestamptz`` (the session
    time zone changes how they are written, never the instant), and the only startup
    parameter is ``application_name``, which PgBouncer passes on by default. It refuses
    any other it was not told to ignore (``unsupported startup parameter``).
    """
    server_settings = {"application_name": "pgnotify"}
    if not settings.DATABASE_PGBOUNCER:
        # asyncpg prepares and caches every statement; after five runs Postgres may switch
        # to a generic plan, and the claim's generic plan was measured to scan the whole
        # queue (11.6 ms against 1.4 ms). Our statements are few and cheap to plan: always
        # plan for the values. Behind PgBouncer the cache is off: each statement is parsed
        # anew as the unnamed statement, whose first execution Postgres always plans for
        # the values, so the setting is not needed there (and PgBouncer would refuse it).
        server_settings["plan_cache_mode"] = "force_custom_plan"
    pool: asyncpg.Pool = await asyncpg.create_pool(
        settings.asyncpg_url,
        min_size=1,
        max_size=settings.NOTIFICATION_WORKERS + 3,
        init=init_connection,
        reset=keep_session,
        command_timeout=settings.NOTIFICATION_DB_TIMEOUT,
        timeout=settings.NOTIFICATION_DB_TIMEOUT,
        # Behind PgBouncer (transaction mode) a named prepared statement lives on one
        # server session and the next transaction may run on another: no cache, so asyncpg
        # uses the unnamed statement, which it parses, binds and runs in one exchange
        # (Parse/Describe/Flush, then Bind/Execute/Sync) on one server session.
        statement_cache_size=0 if settings.DATABASE_PGBOUNCER else 100,
        server_settings=server_settings,
    )
    return pool
