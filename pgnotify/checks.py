"""``pgnotify check``: can this configuration work? One OK/FAIL line per dependency."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile

import psycopg

from pgnotify import queries
from pgnotify.catalog import verify_catalog
from pgnotify.channels.email import SmtpChannel
from pgnotify.channels.outbox import make_directory
from pgnotify.channels.registry import build_channels
from pgnotify.channels.sms import TwilioChannel
from pgnotify.db import connect_sync, describe_dsn
from pgnotify.errors import InstallationError, PgnotifyError
from pgnotify.migrate import discover
from pgnotify.model import Catalog
from pgnotify.render_pool import RenderPool, ShopSource
from pgnotify.settings import Settings
from pgnotify.templates import TemplateRenderer
from pgnotify.text import describe_error, one_line


def check_database(settings: Settings) -> str:
    where = describe_dsn(settings.database_url)
    try:
        with connect_sync(settings.database_url, connect_timeout=5) as conn:
            version = conn.execute(queries.SERVER_VERSION).fetchone()
            try:
                applied = {r[0] for r in conn.execute(queries.APPLIED_MIGRATIONS)}
            except psycopg.errors.UndefinedTable:  # never migrated
                applied = set()
    except PgnotifyError as exc:
        return f"FAIL database: {exc}"
    except psycopg.Error as exc:  # say what the server said: a missing right is no missing table
        return f"FAIL database {where}: {describe_error(exc)}"
    wanted = [m.version for m in discover()]
    missing = [v for v in wanted if v not in applied]
    pg = f"PostgreSQL {version[0] if version else '?'}"
    if missing:
        return (
            f"FAIL database {where}: {pg}, not migrated (missing {', '.join(missing)}):"
            " run pgnotify migrate"
        )
    return f"OK database {where}: {pg}, migrated ({len(wanted)} migrations)"


def check_catalog(settings: Settings) -> str:
    """Do the database's kinds and channels agree with this install's templates?"""
    try:
        with connect_sync(settings.database_url, connect_timeout=5) as conn:
            row = conn.execute(queries.CATALOG).fetchone()
    except (PgnotifyError, psycopg.Error) as exc:
        return f"FAIL catalog: cannot read pgnotify.kinds: {one_line(str(exc))}"
    catalog = Catalog.from_row(row)
    channels = build_channels(settings)
    try:
        compiled = verify_catalog(catalog, TemplateRenderer.from_settings(settings), channels)
    except InstallationError as exc:
        return f"FAIL catalog: {exc}"
    return (
        f"OK catalog: {len(catalog.kinds)} kinds × {len(catalog.channels)} channels,"
        f" {len(compiled)} templates"
    )


def check_outbox(settings: Settings, channel: str, unset: str) -> str:
    directory = settings.NOTIFICATION_OUTBOX_DIR
    try:
        make_directory(directory)  # 0700, as the channel makes it: the files are personal data
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".check-"):
            pass
    except OSError as exc:
        return (
            f"FAIL {channel}: outbox mode ({unset} unset) but {directory} is not writable:"
            f" {exc.strerror}"
        )
    return f"OK {channel}: outbox mode ({unset} unset), writing to {directory.resolve()}"


def check_templates(settings: Settings) -> str:
    try:
        compiled = TemplateRenderer.from_settings(settings).compile_all()
    except PgnotifyError as exc:
        return f"FAIL templates: {exc}"
    return f"OK templates: {len(compiled)} compiled"


def check_shop_templates(settings: Settings) -> list[str]:
    """One line per shop with a template folder: its files compile, or the first that does not.

    A shop's files are untrusted, so they compile in the render pool, under its budget
    (compiling runs a template's constant expressions). The daemon starts whatever these
    say; the shop's own notifications are the ones that would fail.
    """
    renderer = TemplateRenderer.from_settings(settings)
    shops = renderer.shop_ids()
    if not shops:
        return []
    pool = RenderPool(
        renderer.roots,
        timeout=settings.NOTIFICATION_RENDER_TIMEOUT,
        memory_mb=settings.NOTIFICATION_RENDER_MEMORY_MB,
        size=1,
    )
    lines = []
    try:
        for shop in shops:
            files = [f for f in renderer.shop_files(shop) if f[0] in renderer.locales]
            try:
                for lang, name, path in files:
                    source = ShopSource(
                        f"template {name} ({lang}, shop {shop})", shop, (str(path),)
                    )
                    pool.compile_blocking(source, name, locale=lang, shop_id=shop)
            except PgnotifyError as exc:
                lines.append(f"FAIL shop {shop}: {exc}")
            else:
                noun = "template" if len(files) == 1 else "templates"
                lines.append(f"OK shop {shop}: {len(files)} {noun} compiled")
    finally:
        pool.close()
    return lines


async def _check_provider(channel: SmtpChannel | TwilioChannel) -> str:
    try:
        return await channel.check()
    finally:
        with contextlib.suppress(Exception):
            await channel.aclose()


async def run_checks(settings: Settings) -> list[str]:
    """Every check, in order; none stops the others."""
    lines = ["OK settings: valid"]
    lines.append(await asyncio.to_thread(check_database, settings))
    if lines[-1].startswith("OK"):
        lines.append(await asyncio.to_thread(check_catalog, settings))
    lines.append(check_templates(settings))
    lines += await asyncio.to_thread(check_shop_templates, settings)
    if settings.smtp_configured:
        lines.append(await _check_provider(SmtpChannel(settings)))
    else:
        lines.append(check_outbox(settings, "email", "SMTP_SERVER"))
    if settings.twilio_configured:
        lines.append(await _check_provider(TwilioChannel(settings)))
    else:
        lines.append(check_outbox(settings, "sms", "TWILIO_ACCOUNT_SID"))
    return lines
