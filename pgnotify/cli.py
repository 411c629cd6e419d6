"""The ``pgnotify`` command line: one sub-command per operator task."""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import psycopg

from pgnotify import __version__, queries
from pgnotify.db import connect_sync
from pgnotify.errors import DatabaseUnavailable, InstallationError, PgnotifyError, SettingsError
from pgnotify.migrate import MigrationError, migrate
from pgnotify.model import Catalog
from pgnotify.resources import sql_dir, templates_dir
from pgnotify.settings import Settings, load_settings
from pgnotify.templates import PARTS
from pgnotify.text import describe_error, one_line, redact

EXIT_USAGE = 2
Command = Callable[[Settings, argparse.Namespace], int]
# Database errors that say the configuration is wrong (exit 2, like a bad setting), not
# that this one command failed (exit 1).
_CONFIGURATION_ERRORS = (
    psycopg.errors.InsufficientPrivilege,
    psycopg.errors.InvalidPassword,
    psycopg.errors.InvalidAuthorizationSpecification,
)


def _cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    if settings.DATABASE_PGBOUNCER:
        # The migration lock is a session advisory lock: transaction pooling would take it
        # on one server session and release it on another (or never).
        raise SettingsError(
            "DATABASE_PGBOUNCER=true: pgnotify migrate needs a DATABASE_URL direct to the"
            " server (it holds a session-level lock); run it with DATABASE_PGBOUNCER unset"
        )
    applied = migrate(settings.database_url)
    for name in applied:
        print(f"applied {name}")
    if not applied:
        print("database is up to date")
    return 0


def _cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    from pgnotify import logs
    from pgnotify.daemon import Daemon

    logs.configure(settings.log_format, settings.NOTIFICATION_LOG_LEVEL)
    return asyncio.run(Daemon(settings).run())


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    return str(value)


def _print_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    print(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")


def _cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    with connect_sync(settings.database_url) as conn:
        cur = conn.execute(queries.STATUS)
        columns = [d.name for d in cur.description or []]
        rows = cur.fetchall()
    if args.json:
        print(json.dumps([dict(zip(columns, r, strict=True)) for r in rows], default=_fmt))
    else:
        _print_table(columns, rows)
    return 0


def _cmd_retry(settings: Settings, args: argparse.Namespace) -> int:
    with connect_sync(settings.database_url, autocommit=True) as conn:
        if args.all_failed:
            rows = conn.execute(queries.RETRY_ALL_FAILED, {"kind": args.kind}).fetchall()
            done = [r[0] for r in rows if r[1]]
            print(f"re-queued {len(done)} failed notification(s)" + (f": {done}" if done else ""))
            return 0
        row = conn.execute(queries.RETRY_ONE, (args.id,)).fetchone()
    if row and row[0]:
        print(f"re-queued notification {args.id}")
        return 0
    print(
        f"pgnotify: notification {args.id} is not failed or skipped (or does not exist)",
        file=sys.stderr,
    )
    return 1


def _cmd_render(settings: Settings, args: argparse.Namespace) -> int:
    from pgnotify.compose import render_preview

    with connect_sync(settings.database_url) as conn:
        conn.execute("set timezone = 'UTC'")
        catalog = Catalog.from_row(conn.execute(queries.CATALOG).fetchone())
        kinds = catalog.kinds
        if args.kind not in kinds:
            print(
                f"pgnotify: unknown kind {args.kind!r} (known: {', '.join(kinds)})", file=sys.stderr
            )
            return EXIT_USAGE
        row = conn.execute(
            queries.PREVIEW_CONTEXT,
            {"booking_id": args.booking, "with_payment": args.kind in catalog.payment_kinds},
        ).fetchone()
    if row is None or row[0] is None:
        print(f"pgnotify: booking {args.booking} not found", file=sys.stderr)
        return 1
    audience = "shop" if args.kind in catalog.shop_kinds else "customer"
    print(
        render_preview(
            settings, args.kind, row[0], channel=args.channel, locale=args.locale, audience=audience
        ),
        end="",
    )
    return 0


def _cmd_check(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    from pgnotify.checks import run_checks

    lines = [redact(line) for line in asyncio.run(run_checks(settings))]
    for line in lines:
        print(line)
    return 1 if any(line.startswith("FAIL") for line in lines) else 0


def _cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from pgnotify.demo import insert_demo

    with connect_sync(settings.database_url, autocommit=True) as conn:
        print(insert_demo(conn, fast=args.fast))
    return 0


def _uuid(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a uuid: {value!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pgnotify",
        description="Booking notifications owned by Postgres, delivered by one asyncio daemon.",
    )
    parser.add_argument("--version", action="version", version=f"pgnotify {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, func: Command, summary: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=summary)
        p.set_defaults(func=func)
        return p

    command("migrate", _cmd_migrate, "apply the SQL in sql/ to DATABASE_URL (idempotent)")
    command("run", _cmd_run, "run the delivery daemon in the foreground (systemd runs this)")

    p = command("status", _cmd_status, "print pgnotify.status: counts by kind, channel, status")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    command("check", _cmd_check, "check settings, database, SMTP and Twilio: one OK/FAIL line each")

    p = command("render", _cmd_render, "preview what a kind would send for a booking")
    p.add_argument("kind", help="a kind of pgnotify.kinds, e.g. booking_confirmed")
    p.add_argument("--booking", required=True, type=_uuid, help="booking id")
    p.add_argument("--channel", choices=list(PARTS), help="only this channel")
    p.add_argument("--locale", help="force a language (en, es)")

    p = command("retry", _cmd_retry, "put failed notifications back in the queue, due now")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("id", nargs="?", type=int, help="a notification id")
    target.add_argument("--all-failed", action="store_true", help="every failed notification")
    p.add_argument("--kind", help="with --all-failed: only this kind")

    p = command("demo", _cmd_demo, "insert a demo shop, customer, booking and payment")
    p.add_argument(
        "--fast",
        action="store_true",
        help="book 25 s ahead with reminders 24 s and 2 s before (demos only)",
    )
    return parser


# What each command reads from the install: a broken install is found before connecting,
# and is never one failed check among others.
_NEEDS = {"migrate": (sql_dir,), "check": (sql_dir, templates_dir)}
_NEEDS.update(run=(sql_dir, templates_dir), render=(templates_dir,))


def _fail(message: str, code: int) -> int:
    """Print ``pgnotify: message`` as one redacted line on stderr; return ``code``."""
    print(f"pgnotify: {one_line(redact(message))}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    func: Command = args.func
    try:
        for find in _NEEDS.get(args.command, ()):
            find()
        settings = load_settings()
        return func(settings, args)
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName) as exc:
        return _fail(
            f"the database is not migrated ({describe_error(exc)}): run pgnotify migrate",
            EXIT_USAGE,
        )
    except _CONFIGURATION_ERRORS as exc:
        return _fail(describe_error(exc), EXIT_USAGE)
    except psycopg.Error as exc:
        return _fail(describe_error(exc), 1)
    except (SettingsError, DatabaseUnavailable, MigrationError, InstallationError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    except PgnotifyError as exc:
        return _fail(str(exc), 1)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
