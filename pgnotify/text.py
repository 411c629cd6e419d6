"""One line of text, whatever came in: for ``last_error``, log fields and email headers.

Also the one redaction function of pgnotify: every error path (settings errors, database
errors, the CLI's output, ``pgnotify check``, the daemon's logged errors) passes its text
through ``redact`` before it is shown, so no password or token reaches a terminal or the
journal, whatever the input. This module imports nothing from pgnotify: everything may
use it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus, unquote

MAX_LINE = 1000
_CONTROLS = {code: " " for code in (*range(32), 127)}

HIDDEN = "***"
# The secrets of the settings in use (``remember_secrets``), in every form they may be
# printed in. Module state because errors are described far from the settings (a logged
# asyncpg error, a libpq message), and a process runs with one configuration.
_secrets: frozenset[str] = frozenset()
# Whatever the registry holds, a password in a URL's user-info or a libpq keyword string
# is never shown: ``scheme://user:PASSWORD@`` and ``password=PASSWORD``.
_URL_PASSWORD = re.compile(r"(?i)([a-z][a-z0-9+.-]*://[^:/?#@\s]*:)[^\s]*@")
_KEYWORD_PASSWORD = re.compile(r"(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'?|[^\s'\"]+)")


def one_line(value: str, limit: int = MAX_LINE) -> str:
    """Control characters to spaces, whitespace runs to one space, trimmed; cut with "…".

    Providers answer with multi-line text, names and subjects may hold a newline: none of
    it may split a log line or a header, and none of it may grow without bound.
    """
    flat = " ".join(value.translate(_CONTROLS).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def storable(value: str) -> str:
    """``value`` as Postgres can store it in a text column: no NUL, no lone surrogate
    (which UTF-8 cannot encode), each replaced rather than failing the statement that
    writes it and every other row of that statement with it."""
    return value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def _forms(secret: str) -> set[str]:
    """A secret as it may be printed: as given or percent-decoded, each percent-encoded
    the ways URLs and forms do."""
    forms: set[str] = set()
    for plain in (secret, unquote(secret)):
        forms |= {plain, quote(plain, safe=""), quote(plain), quote_plus(plain)}
    return forms - {""}


def remember_secrets(values: Iterable[str]) -> None:
    """Make ``values`` the secrets ``redact`` hides (replacing those remembered before).

    Settings call this as they load, before any validation can fail, so a message about
    a bad setting is redacted too.
    """
    global _secrets
    _secrets = frozenset(form for value in values if value for form in _forms(value))


def redact(text: str, also: Iterable[str] = ()) -> str:
    """``text`` without any secret: the remembered ones, ``also`` and URL/keyword passwords.

    Longest secrets are hidden first, so a secret that contains another is hidden whole.
    """
    secrets = _secrets.union(form for value in also if value for form in _forms(value))
    for secret in sorted(secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, HIDDEN)
    text = _URL_PASSWORD.sub(rf"\g<1>{HIDDEN}@", text)
    return _KEYWORD_PASSWORD.sub(rf"\g<1>{HIDDEN}", text)


def describe_error(exc: BaseException) -> str:
    """An exception as one redacted line: its class, and its message when it has one.

    Timeouts carry no message, so ``str(exc)`` alone would log an empty error exactly
    when something hangs.
    """
    text = one_line(redact(str(exc)))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
