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

Every environment is sandboxed; ``StrictUndefined`` turns a missing variable into an
error instead of a blank, and every template error becomes a ``PermanentError`` naming the
template. Templates are compiled once and kept (no file system access on the hot path).

Shop owners write their folders, so those are untrusted (CONTRACT §5): ``shop_source``
tells which renders read a shop's file, and the composer sends only those to the render
pool (``render_pool.py``, time and memory budget, ``ImmutableSandboxedEnvironment``).
Everything else renders here, inline. This process never compiles a shop's file: compiling
evaluates constant expressions, which is enough for ``'x' * 3000000000``.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import (
    Environment,
    FileSystemLoader,
    StrictUndefined,
    Template,
    TemplateError,
    TemplateNotFound,
    TemplateSyntaxError,
)
from jinja2.meta import find_referenced_templates
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedEnvironment

from pgnotify.errors import PermanentError
from pgnotify.render_pool import ShopSource
from pgnotify.resources import templates_dir

if TYPE_CHECKING:
    # Not imported at run time: the render pool's workers import this module, and start
    # twice as fast without pydantic.
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
        self._envs: dict[tuple[str | None, str], Environment] = {}
        self._templates: dict[tuple[str | None, str, str, str], Template] = {}
        self._flat_globals: dict[Template, dict[str, Any]] = {}
        self._shop_dirs: dict[str, bool] = {}
        self._shop_sources: dict[tuple[str, str, str, str], ShopSource | None] = {}
        self.locales: frozenset[str] = frozenset(self._folders() - {"shops"})
        """The languages some root has a folder for."""

    @classmethod
    def from_settings(cls, settings: Settings) -> TemplateRenderer:
        """Operator templates (``NOTIFICATION_TEMPLATES_DIR``) first, then the defaults."""
        roots = [templates_dir()]
        if settings.NOTIFICATION_TEMPLATES_DIR is not None:
            roots.insert(0, settings.NOTIFICATION_TEMPLATES_DIR)
        return cls(roots)

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
            # What Template.render does, minus its dict(*args, **kwargs) and its walk of
            # the globals' ChainMap on every call: one C-level merge of the globals
            # (flattened once per template) and the context, which wins. Every variable
            # lookup is then a dict lookup, not ChainMap's Python-level ``in`` and ``[]``
            # (5 % of the daemon's CPU per email before).
            scope = {**self._globals_of(template), **context}
            render = template.root_render_func(template.new_context(scope, shared=True))
            text = template.environment.concat(render)
        except Exception as exc:
            # Shop-written templates can fail in any way (1/0, bad filter argument); the
            # same data would fail again, so the error is permanent, not a daemon crash.
            why = exc if isinstance(exc, TemplateError) else f"{type(exc).__name__}: {exc}"
            label = self._label(f"{kind}/{part}", locale, shop_id)
            raise PermanentError(f"{label}: {why}") from exc
        text = text.strip()
        if not text:
            label = self._label(f"{kind}/{part}", locale, shop_id)
            raise PermanentError(f"{label} rendered empty")
        return text

    def _globals_of(self, template: Template) -> dict[str, Any]:
        flat = self._flat_globals.get(template)
        if flat is None:
            flat = self._flat_globals[template] = dict(template.globals)
        return flat

    def template(
        self, kind: str, part: str, *, locale: str = DEFAULT_LOCALE, shop_id: str | None = None
    ) -> Template:
        """The compiled template for ``<kind>/<part>``, from the cache after the first call."""
        shop = shop_id if shop_id and self._has_shop_dir(shop_id) else None
        lang = locale if locale in self.locales else DEFAULT_LOCALE
        key = (shop, lang, kind, part)
        cached = self._templates.get(key)
        if cached is not None:
            return cached
        if not (_SAFE_SEGMENT.match(kind) and _SAFE_SEGMENT.match(part.replace(".", "_"))):
            raise PermanentError(f"invalid template name {kind!r}/{part!r}")
        template = self.compile_file(f"{kind}/{part}", locale=lang, shop_id=shop)
        self._templates[key] = template
        return template

    @property
    def kinds(self) -> tuple[str, ...]:
        """The kinds the default locale has a folder for, in any root."""
        return tuple(sorted(self._folders(DEFAULT_LOCALE)))

    def compile_all(
        self,
        kinds: Iterable[str] | None = None,
        channels: Iterable[str] | None = None,
        shop_ids: Iterable[str | None] = (None,),
    ) -> list[str]:
        """Compile every kind × channel part in every locale (and for the given shops).

        ``kinds`` defaults to every kind folder; ``channels`` to every channel in ``PARTS``
        of which the kind's default-locale folder holds a part (a shop's alert has no
        in-app part), so a started channel must be complete. The daemon passes the
        database's catalog, which says which channels each kind needs. Returns the labels
        compiled; raises ``PermanentError`` at the first broken or missing one. Used by
        tests and at start-up, so a typo fails loudly instead of per notification.
        """
        kinds = tuple(self.kinds if kinds is None else kinds)
        wanted = {
            kind: tuple(self.channels_of(kind) if channels is None else channels) for kind in kinds
        }
        done = []
        for shop, lang, kind in itertools.product(shop_ids, sorted(self.locales), kinds):
            for channel in wanted[kind]:
                for part in PARTS[channel]:
                    self.template(kind, part, locale=lang, shop_id=shop)
                    done.append(self._label(f"{kind}/{part}", lang, shop))
        return done

    def channels_of(self, kind: str) -> list[str]:
        """The channels of which ``kind``'s default-locale folder holds some part."""
        folders = [root / DEFAULT_LOCALE / kind for root in self.roots]
        return [
            channel
            for channel, parts in PARTS.items()
            if any((folder / part).is_file() for folder in folders for part in parts)
        ]

    def shop_source(
        self, kind: str, part: str, *, locale: str = DEFAULT_LOCALE, shop_id: str | None = None
    ) -> ShopSource | None:
        """Which of the shop's own files rendering ``<kind>/<part>`` reads; None if none.

        None means the render reads only shipped and operator files, so it is trusted and
        renders the same with ``shop_id=None``. Otherwise the render must go to the render
        pool. Found once per (shop, locale, kind, part) by following ``extends``,
        ``include`` and ``import`` through the trusted files only (a shop's file is never
        parsed here); a reference whose name is computed counts as reading the shop's files.
        """
        if not shop_id or not self._has_shop_dir(shop_id):
            return None
        lang = locale if locale in self.locales else DEFAULT_LOCALE
        key = (shop_id, lang, kind, part)
        if key in self._shop_sources:
            return self._shop_sources[key]
        if not (_SAFE_SEGMENT.match(kind) and _SAFE_SEGMENT.match(part.replace(".", "_"))):
            raise PermanentError(f"invalid template name {kind!r}/{part!r}")
        search = self._search(shop_id, lang)
        trusted = self._env(None, lang)
        files: list[str] = []
        todo, seen = [f"{kind}/{part}"], set()
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            found = next(
                (
                    (folder / name, is_shop)
                    for folder, is_shop in search
                    if (folder / name).is_file()
                ),
                None,
            )
            if found is None:
                continue  # missing: the render says so
            path, is_shop = found
            if is_shop:
                files.append(str(path))
                continue
            try:
                ast = trusted.parse(path.read_text(encoding="utf-8"), name, str(path))
            except (OSError, TemplateError):
                continue  # a broken trusted file fails inline, with its own error
            for ref in find_referenced_templates(ast):
                if ref is None:
                    files += [
                        str(folder) for folder, is_shop in search if is_shop and folder.is_dir()
                    ]
                else:
                    todo.append(ref)
        label = self._label(f"{kind}/{part}", lang, shop_id)
        source = ShopSource(label, shop_id, tuple(dict.fromkeys(files))) if files else None
        self._shop_sources[key] = source
        return source

    def shop_ids(self) -> list[str]:
        """The shops that have a folder of templates in some root."""
        return sorted(self._folders("shops"))

    def _folders(self, *under: str) -> set[str]:
        """The names of the folders in ``under`` (a path below the roots), in any root."""
        return {
            child.name
            for folder in (root.joinpath(*under) for root in self.roots)
            if folder.is_dir()
            for child in folder.iterdir()
            if child.is_dir()
        }

    def shop_files(self, shop_id: str) -> list[tuple[str, str, Path]]:
        """A shop's own files: (locale, template name, path), for ``pgnotify check``."""
        found = []
        for root in self.roots:
            folder = root / "shops" / shop_id
            if not folder.is_dir():
                continue
            for path in sorted(folder.glob("*/**/*")):
                if path.is_file():
                    lang, _, name = path.relative_to(folder).as_posix().partition("/")
                    found.append((lang, name, path))
        return found

    def compile_file(self, name: str, *, locale: str, shop_id: str | None) -> Template:
        """Compile one template by name (``layout.html``, ``<kind>/<part>``) for the shop.

        Raises ``PermanentError`` naming it when it is missing or does not compile.
        """
        shop = shop_id if shop_id and self._has_shop_dir(shop_id) else None
        lang = locale if locale in self.locales else DEFAULT_LOCALE
        label = self._label(name, lang, shop)
        try:
            return self._env(shop, lang).get_template(name)
        except TemplateNotFound as exc:
            raise PermanentError(f"{label}: template {exc.name} not found") from exc
        except TemplateSyntaxError as exc:
            raise PermanentError(
                f"{label}: syntax error in {exc.name or exc.filename} line {exc.lineno}: "
                f"{exc.message}"
            ) from exc
        except TemplateError as exc:
            raise PermanentError(f"{label}: {exc}") from exc

    def _search(self, shop: str | None, lang: str) -> list[tuple[Path, bool]]:
        """The folders a (shop, locale) lookup searches, in order; True for a shop's."""
        search: list[tuple[Path, bool]] = []
        for candidate in dict.fromkeys((lang, DEFAULT_LOCALE)):
            if shop is not None:
                search += [(root / "shops" / shop / candidate, True) for root in self.roots]
            search += [(root / candidate, False) for root in self.roots]
        return search

    def _has_shop_dir(self, shop_id: str) -> bool:
        known = self._shop_dirs.get(shop_id)
        if known is None:
            # The id becomes a path: only plain ids are looked up (no "..", no "/").
            known = bool(_SAFE_SEGMENT.match(shop_id)) and any(
                (root / "shops" / shop_id).is_dir() for root in self.roots
            )
            self._shop_dirs[shop_id] = known
        return known

    def _env(self, shop: str | None, lang: str) -> Environment:
        env = self._envs.get((shop, lang))
        if env is None:
            # A shop's environment may not even mutate what it is given (list.append...).
            cls = SandboxedEnvironment if shop is None else ImmutableSandboxedEnvironment
            env = cls(
                loader=FileSystemLoader([folder for folder, _ in self._search(shop, lang)]),
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
    def _label(name: str, locale: str, shop: str | None) -> str:
        where = f"{locale}, shop {shop}" if shop else locale
        return f"template {name} ({where})"
