"""The catalog check: the database's kinds and channels against what this install renders.

``pgnotify.kinds`` and ``pgnotify.channels`` are the one list. The daemon reads them once at
start; a kind without templates, or a channel this version cannot compose or deliver, stops
it there, loudly, instead of failing every notification of that kind.
"""

from __future__ import annotations

from collections.abc import Iterable

from pgnotify.errors import InstallationError, PermanentError
from pgnotify.model import Catalog
from pgnotify.templates import PARTS, TemplateRenderer

INAPP = "inapp"
"""The one channel delivered by a database write (``pgnotify.inbox``), not a transport."""


def verify_catalog(
    catalog: Catalog, renderer: TemplateRenderer, transports: Iterable[str]
) -> list[str]:
    """Compile every kind's templates for every channel; returns the templates compiled.

    The shop's kinds (``catalog.shop_kinds``) need none for in-app: a shop has no inbox, so
    such a row is skipped with the reason before anything renders. Raises
    ``InstallationError`` naming what does not agree.
    """
    deliverable = {*transports, INAPP}
    unknown = [c for c in catalog.channels if c not in PARTS or c not in deliverable]
    if unknown:
        raise InstallationError(
            f"pgnotify.channels lists {', '.join(unknown)}, which this version of pgnotify"
            " cannot compose or deliver"
        )
    shop_kinds = [k for k in catalog.kinds if k in catalog.shop_kinds]
    customer_kinds = [k for k in catalog.kinds if k not in catalog.shop_kinds]
    try:
        return renderer.compile_all(customer_kinds, catalog.channels) + renderer.compile_all(
            shop_kinds, [c for c in catalog.channels if c != INAPP]
        )
    except PermanentError as exc:
        raise InstallationError(f"pgnotify.kinds and the templates disagree: {exc}") from None
