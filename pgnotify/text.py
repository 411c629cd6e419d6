"""One line of text, whatever came in: for ``last_error``, log fields and email headers."""

from __future__ import annotations

MAX_LINE = 1000
_CONTROLS = {code: " " for code in (*range(32), 127)}


def one_line(value: str, limit: int = MAX_LINE) -> str:
    """Control characters to spaces, whitespace runs to one space, trimmed; cut with "…".

    Providers answer with multi-line text, names and subjects may hold a newline: none of
    it may split a log line or a header, and none of it may grow without bound.
    """
    flat = " ".join(value.translate(_CONTROLS).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def describe_error(exc: BaseException) -> str:
    """An exception as one line: its class, and its message when it has one.

    Timeouts carry no message, so ``str(exc)`` alone would log an empty error exactly
    when something hangs.
    """
    text = one_line(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
