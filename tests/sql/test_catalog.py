"""One list of kinds and channels: pgnotify.kinds and pgnotify.channels.

The tables are the source; routes, reminder rules, opt-outs, notify_booking, the templates,
the compose dispatch and the channel registry must agree with them, and adding a kind takes
one INSERT (plus its routes) and one template folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgnotify import queries
from pgnotify.catalog import verify_catalog
from pgnotify.channels.registry import build_channels
from pgnotify.errors import InstallationError
from pgnotify.model import Catalog
from pgnotify.resources import templates_dir
from pgnotify.settings import load_settings
from pgnotify.templates import PARTS, TemplateRenderer
from tests.daemon.harness import count_reaches, make_settings, running
from tests.factories import make_booking, make_world


def catalog(db: psycopg.Connection[Any]) -> Catalog:
    return Catalog.from_row(db.execute(queries.CATALOG).fetchone())


def test_the_database_lists_exactly_the_kinds_every_locale_has_templates_for(
    db: psycopg.Connection[Any],
) -> None:
    listed = catalog(db)
    for locale in ("en", "es"):
        folders = sorted(p.name for p in (templates_dir() / locale).iterdir() if p.is_dir())
        assert folders == sorted(listed.kinds), locale
    assert sorted(listed.channels) == sorted(PARTS)
    compiled = verify_catalog(listed, TemplateRenderer(), build_channels(load_settings()))
    # The shop's alerts need no in-app part: a shop has no inbox (tests/sql/test_shop_alerts.py).
    assert listed.shop_kinds
    assert len(compiled) == 2 * (
        len(listed.kinds) * sum(len(PARTS[c]) for c in listed.channels)
        - len(listed.shop_kinds) * len(PARTS["inapp"])
    )


@pytest.mark.parametrize(
    ("statement", "column"),
    [
        ("insert into pgnotify.routes (kind, channel) values ('no_such_kind', 'email')", "kind"),
        ("insert into pgnotify.routes (kind, channel) values ('booking_confirmed', 'fax')", "chan"),
        (
            "insert into pgnotify.reminder_rules (kind, before_start)"
            " values ('reminder_1w', interval '7 days')",
            "kind",
        ),
    ],
)
def test_rules_refuse_a_kind_or_channel_the_catalog_does_not_list(
    db: psycopg.Connection[Any], statement: str, column: str
) -> None:
    with pytest.raises(psycopg.errors.ForeignKeyViolation, match=column):
        db.execute(statement)


@pytest.mark.parametrize(
    ("kind", "channels"),
    [("no_such_kind", None), (None, None), ("booking_confirmed", ["fax"]), ("reminder_2h", [None])],
)
def test_notify_booking_refuses_what_the_catalog_does_not_list(
    db: psycopg.Connection[Any], kind: str | None, channels: list[str | None] | None
) -> None:
    booking = make_booking(db, make_world(db), status="pending")
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        db.execute("select pgnotify.notify_booking(%s, %s, %s)", (booking, kind, channels))


def test_a_kind_without_templates_or_a_channel_without_a_renderer_is_refused() -> None:
    renderer = TemplateRenderer()
    transports = build_channels(load_settings())
    with pytest.raises(InstallationError, match="template no_show/"):
        verify_catalog(Catalog(("booking_confirmed", "no_show"), ("email",)), renderer, transports)
    with pytest.raises(InstallationError, match=r"pgnotify\.channels lists push"):
        verify_catalog(Catalog(("booking_confirmed",), ("email", "push")), renderer, transports)


async def test_adding_a_kind_takes_one_insert_and_one_template_folder(
    db: psycopg.Connection[Any], clean_db: str, tmp_path: Path
) -> None:
    """A new kind, its route and its templates: notify_booking sends it by email."""
    db.execute("insert into pgnotify.kinds values ('booking_thanks', 'after the visit')")
    try:
        db.execute("insert into pgnotify.routes (kind, channel) values ('booking_thanks', 'email')")
        operator = tmp_path / "templates"
        for locale in ("en", "es"):
            folder = operator / locale / "booking_thanks"
            shutil.copytree(templates_dir() / locale / "booking_confirmed", folder)
            (folder / "email_subject.txt").write_text("Thanks for visiting {{ shop.name }}")
        booking = make_booking(db, make_world(db), status="pending")
        settings = make_settings(clean_db, tmp_path / "outbox", NOTIFICATION_TEMPLATES_DIR=operator)
        async with running(settings):
            (ids,) = db.execute(
                "select pgnotify.notify_booking(%s, 'booking_thanks', array['email'])", (booking,)
            ).fetchone() or ([],)
            assert len(ids) == 1
            await count_reaches(clean_db, 1, "kind = 'booking_thanks' and status = 'sent'")
        (eml,) = (tmp_path / "outbox").glob("*.eml")
        assert "Subject: Thanks for visiting" in eml.read_text()
    finally:
        db.execute("delete from pgnotify.notifications where kind = 'booking_thanks'")
        db.execute("delete from pgnotify.routes where kind = 'booking_thanks'")
        db.execute("delete from pgnotify.kinds where kind = 'booking_thanks'")


async def test_a_daemon_whose_database_lists_a_kind_without_templates_exits_2(
    db: psycopg.Connection[Any], clean_db: str, tmp_path: Path
) -> None:
    from pgnotify.daemon import Daemon

    db.execute("insert into pgnotify.kinds values ('no_show', 'no templates for this one')")
    try:
        daemon = Daemon(make_settings(clean_db, tmp_path / "outbox"))
        assert await daemon.run(install_signals=False) == 2
    finally:
        db.execute("delete from pgnotify.kinds where kind = 'no_show'")
