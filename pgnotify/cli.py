"""The ``pgnotify`` command line: one sub-command per operator task."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from pgnotify import __version__
from pgnotify.db import check_dsn, connect_sync
from pgnotify.errors import DatabaseUnavailable, PgnotifyError, SettingsError
from pgnotify.migrate import MigrationError, migrate
from pgnotify.settings import Settings, load_settings

EXIT_USAGE = 2


def _cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    applied = migrate(settings.database_url)
    if applied:
        for name in applied:
            print(f"applied {name}")
    else:
        print("database is up to date")
    return 0


def _cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    from pgnotify import logs
    from pgnotify.daemon import Daemon

    check_dsn(settings.database_url)
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
        cur = conn.execute("select * from pgnotify.status")
        columns = [d.name for d in cur.description or []]
        rows = cur.fetchall()
    if args.json:
        print(json.dumps([dict(zip(columns, r, strict=True)) for r in rows], default=_fmt))
    else:
        _print_table(columns, rows)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pgnotify",
        description="Booking notifications owned by Postgres, delivered by one asyncio daemon.",
    )
    parser.add_argument("--version", action="version", version=f"pgnotify {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("migrate", help="apply the SQL in sql/ to DATABASE_URL (idempotent)")
    p.set_defaults(func=_cmd_migrate)

    p = sub.add_parser("run", help="run the delivery daemon in the foreground (systemd runs this)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("status", help="print pgnotify.status: counts by kind, channel, status")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    func: Callable[[Settings, argparse.Namespace], int] = args.func
    try:
        settings = load_settings()
        return func(settings, args)
    except (SettingsError, DatabaseUnavailable, MigrationError) as exc:
        print(f"pgnotify: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PgnotifyError as exc:
        print(f"pgnotify: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
