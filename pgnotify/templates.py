"""Template lookup, compilation and rendering (jinja2, sandboxed, strict).

Layout on disk, under each root (``NOTIFICATION_TEMPLATES_DIR`` first when set, then the
bundled ``templates/``)::

    <locale>/layout.html, <locale>/<kind>/<part>
    shops/<shop-id>/<locale>/<kind>/<part>      (a shop's overrides, any subset)

A lookup for (shop, locale) tries, file by file: the shop's folder in that locale, the
defaults in that locale, then the same two in ``en``. The language wins over the shop: a
Spanish customer of a shop that only customised English gets the default Spanish text.
``{% extends "layout.html" %}`` follows the same chain, so a shop may override only its
layout.

Shop owners may write templates, so the environment is sandboxed; ``StrictUndefined``
turns a missing variable into an error instead of a blank, and every template error
becomes a ``PermanentError`` naming the template. Templates are compiled once and kept
(no file system access on the hot path); ``clear_cache`` picks up edits.
"""

from __future__ import annotations

import re
from collections import ChainMap
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from jinja2 import (
    FileSystemLoader,
    StrictUndefined,
    Template,
    TemplateError,
    TemplateNotFound,
    TemplateSyntaxError,
)
from jinja2.sandbox import SandboxedEnvironment

from pgnotify.errors import PermanentError
from pgnotify.resources import templates_dir
from pgnotify.settings import Settings

DEFAULT_LOCALE = "en"

PARTS: Mapping[str, tuple[str, ...]] = {
    "email": ("email_subject.txt", "email.txt", "email.html"),
    "sms": ("sms.txt",),
    "inapp": ("inapp_title.txt", "inapp_body.txt"),
}
"""The template files each channel renders, per kind."""

_SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class TemplateRenderer:
    """Finds, compiles (once) and renders the templates of every kind, locale and shop."""

    def __init__(self, roots: Sequence[Path] | None = None) -> None:
        self.roots: tuple[Path, ...] = tuple(roots) if roots else (templates_dir(),)
        self._envs: dict[tuple[str | None, str], SandboxedEnvironment] = {}
        self._templates: dict[tuple[str | None, str, str, str], Template] = {}
        self._shop_dirs: dict[str, bool] = {}
        self._locales = frozenset(
            child.name
            for root in self.roots
            if root.is_dir()
            for child in root.iterdir()
            if child.is_dir() and child.name != "shops"
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> TemplateRenderer:
        """Operator templates (``NOTIFICATION_TEMPLATES_DIR``) first, then the defaults."""
        roots = [templates_dir()]
        if settings.NOTIFICATION_TEMPLATES_DIR is not None:
            roots.insert(0, settings.NOTIFICATION_TEMPLATES_DIR)
        return cls(roots)

    @property
    def locales(self) -> frozenset[str]:
        """The languages some root has a folder for."""
        return self._locales

    def clear_cache(self) -> None:
        """Forget compiled templates and shop folders, to pick up edits on disk."""
        self._envs.clear()
        self._templates.clear()
        self._shop_dirs.clear()

    def render(
        self,
        kind: str,
        part: str,
        context: Mapping[str, Any],
        *,
        locale: str = DEFAULT_LOCALE,
        shop_id: str | None = None,
    ) -> str:
        """Render ``<kind>/<part>`` for the shop and locale; stripped, never empty.

        Raises ``PermanentError`` (with the template's name and the reason) when the
        template is missing, does not compile, fails, or renders only whitespace.
        """
        template = self.template(kind, part, locale=locale, shop_id=shop_id)
        try:
            # What Template.render does, minus copying the globals and the context into a
            # fresh dict on every call (half the cost of a short template): the context
            # is read-only to templates, so it is shared, with the globals behind it.
            scope: Any = ChainMap(cast(dict[str, Any], context), template.globals)
            render = template.root_render_func(template.new_context(scope, shared=True))
            text = template.environment.concat(render)
        except TemplateError as exc:
            raise PermanentError(f"{self._label(kind, part, locale, shop_id)}: {exc}") from exc
        except Exception as exc:
            # Shop-written templates can fail in any way (1/0, bad filter argument); the
            # same data would fail again, so the error is permanent, not a daemon crash.
            raise PermanentError(
                f"{self._label(kind, part, locale, shop_id)}: {type(exc).__name__}: {exc}"
            ) from exc
        text = text.strip()
        if not text:
            raise PermanentError(f"{self._label(kind, part, locale, shop_id)} rendered empty")
        return text

    def template(
        self, kind: str, part: str, *, locale: str = DEFAULT_LOCALE, shop_id: str | None = None
    ) -> Template:
        """The compiled template for ``<kind>/<part>``, from the cache after the first call."""
        shop = shop_id if shop_id and self._has_shop_dir(shop_id) else None
        lang = locale if locale in self._locales else DEFAULT_LOCALE
        key = (shop, lang, kind, part)
        cached = self._templates.get(key)
        if cached is not None:
            return cached
        if not (_SAFE_SEGMENT.match(kind) and _SAFE_SEGMENT.match(part.replace(".", "_"))):
            raise PermanentError(f"invalid template name {kind!r}/{part!r}")
        env = self._env(shop, lang)
        label = self._label(kind, part, lang, shop)
        try:
            template = env.get_template(f"{kind}/{part}")
        except TemplateNotFound as exc:
            raise PermanentError(f"{label}: template {exc.name} not found") from exc
        except TemplateSyntaxError as exc:
            raise PermanentError(
                f"{label}: syntax error in {exc.name or exc.filename} line {exc.lineno}: "
                f"{exc.message}"
            ) from exc
        except TemplateError as exc:
            raise PermanentError(f"{label}: {exc}") from exc
        self._templates[key] = template
        return template

    @property
    def kinds(self) -> tuple[str, ...]:
        """The kinds the default locale has a folder for, in any root."""
        return tuple(
            sorted(
                {
                    child.name
                    for root in self.roots
                    if (root / DEFAULT_LOCALE).is_dir()
                    for child in (root / DEFAULT_LOCALE).iterdir()
                    if child.is_dir()
                }
            )
        )

    def compile_all(
        self,
        kinds: Iterable[str] | None = None,
        channels: Iterable[str] | None = None,
        shop_ids: Iterable[str | None] = (None,),
    ) -> list[str]:
        """Compile every kind × channel part in every locale (and for the given shops).

        ``kinds`` and ``channels`` default to every kind folder and every channel in
        ``PARTS``; the daemon passes the database's catalog. Returns the labels compiled;
        raises ``PermanentError`` at the first broken or missing one. Used by tests and at
        start-up, so a typo fails loudly instead of per notification.
        """
        kinds = tuple(self.kinds if kinds is None else kinds)
        wanted = tuple(PARTS if channels is None else channels)
        done = []
        for shop in shop_ids:
            for lang in sorted(self._locales):
                for kind in kinds:
                    for channel in wanted:
                        for part in PARTS[channel]:
                            self.template(kind, part, locale=lang, shop_id=shop)
                            done.append(self._label(kind, part, lang, shop))
        return done

    def _has_shop_dir(self, shop_id: str) -> bool:
        known = self._shop_dirs.get(shop_id)
        if known is None:
            # The id becomes a path: only plain ids are looked up (no "..", no "/").
            known = bool(_SAFE_SEGMENT.match(shop_id)) and any(
                (root / "shops" / shop_id).is_dir() for root in self.roots
            )
            self._shop_dirs[shop_id] = known
        return known

    def _env(self, shop: str | None, lang: str) -> SandboxedEnvironment:
        env = self._envs.get((shop, lang))
        if env is None:
            search: list[Path] = []
            for candidate in dict.fromkeys((lang, DEFAULT_LOCALE)):
                if shop is not None:
                    search += [root / "shops" / shop / candidate for root in self.roots]
                search += [root / candidate for root in self.roots]
            env = SandboxedEnvironment(
                loader=FileSystemLoader(search),
                autoescape=lambda name: bool(name and name.endswith((".html", ".htm"))),
                undefined=StrictUndefined,
                auto_reload=False,
                trim_blocks=True,
                lstrip_blocks=True,
                cache_size=-1,
            )
            self._envs[(shop, lang)] = env
        return env

    @staticmethod
    def _label(kind: str, part: str, locale: str, shop: str | None) -> str:
        where = f"{locale}, shop {shop}" if shop else locale
        return f"template {kind}/{part} ({where})"
