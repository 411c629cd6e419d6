"""SMS arithmetic: how many segments a body costs, how long it may be, and E.164.

Carriers bill per segment. A body made only of GSM 03.38 characters is sent as GSM-7
(160 septets in one segment, 153 per segment once concatenated, because the UDH takes
7); the characters of the extension table (``^{}\\[~]|€`` and form feed) take two
septets each. One character outside that alphabet switches the whole message to UCS-2: 70 code
units in one segment, 67 per segment when concatenated, counted in UTF-16 code units
(an emoji is two).

Twilio refuses a body over 1,600 characters, and bills every segment up to there. The
shop's own text (its name, address, staff and service names, a cancellation reason) is
what can make a body that long, so ``shorten_for_sms`` cuts those fields before the
template renders, and ``cap_sms`` cuts the rendered body as the last resort (a shop
template that repeats a field, or is long itself).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")

_E164 = re.compile(r"\+[1-9][0-9]{1,14}")


@dataclass(frozen=True, slots=True)
class SegmentCount:
    """The encoding a body needs, its length in that encoding's units, and its segments."""

    encoding: str  # "GSM-7" or "UCS-2"
    units: int  # septets for GSM-7, UTF-16 code units for UCS-2
    segments: int


def count_segments(body: str) -> SegmentCount:
    """Count the segments ``body`` costs; an empty body still costs one segment."""
    septets = 0
    for char in body:
        if char in GSM7_BASIC:
            septets += 1
        elif char in GSM7_EXTENSION:
            septets += 2
        else:
            units = sms_length(body)
            return SegmentCount("UCS-2", units, _segments(units, 70, 67))
    return SegmentCount("GSM-7", septets, _segments(septets, 160, 153))


# Lookalikes outside GSM-7 and their GSM-7 stand-ins, as Twilio's "smart encoding" does:
# Spanish á, í, ó, ú are not in the GSM alphabet, and one of them triples the cost.
_GSM7_FOLD: dict[int, int | str] = {
    **str.maketrans("áíóúÁÍÓÚâêîôûëïãõçÊÈÀÃÕ", "aiouAIOUaeioueiaocEEAAO"),
    **str.maketrans("‘’‚", "'''"),
    **str.maketrans("“”„«»", '"""""'),
    **str.maketrans("–—−·•", "-----"),
    **str.maketrans("\u00a0\u2009\u202f\t", "    "),
    ord("…"): "...",
}


def fold_to_gsm7(body: str) -> str:
    """Replace lookalikes so ``body`` fits GSM-7, if that makes all of it fit.

    When some character has no stand-in (a name in Cyrillic, an emoji) the message is
    UCS-2 anyway, and the original, accented text is returned unchanged.
    """
    folded = body.translate(_GSM7_FOLD)
    if all(c in GSM7_BASIC or c in GSM7_EXTENSION for c in folded):
        return folded
    return body


def _segments(units: int, single: int, multi: int) -> int:
    return 1 if units <= single else -(-units // multi)


def is_e164(number: str) -> bool:
    """True when ``number`` is ``+`` and 2 to 15 digits, the first not zero."""
    return bool(_E164.fullmatch(number))


MAX_SMS_LENGTH = 1600
"""Twilio's limit on a body, counted here in UTF-16 code units (an emoji is two)."""
SMS_FIELD_MAX = 200
"""Characters of one context field in an SMS. Our SMS templates use at most four such
fields once each, in a few dozen characters of their own: they stay far under the limit."""
_SMS_SECTIONS = ("shop", "staff", "service", "customer", "booking", "payment")
_ELLIPSIS = "..."  # GSM-7: a "…" would turn a cheap body into UCS-2


def shorten_for_sms(ctx: Mapping[str, Any]) -> Mapping[str, Any]:
    """``ctx`` with every text field of its data sections cut to ``SMS_FIELD_MAX``.

    The sections are what shops and customers typed (``shop``, ``staff``, ``service``,
    ``customer``, ``booking``, ``payment``); a cut field ends with ``...``. ``ctx`` itself
    is never changed (one context serves a booking's email, SMS and in-app message): when
    a field is cut, the result is a copy with copied sections; when none is, it is ``ctx``.
    """
    changed: dict[str, Any] = {}
    for name in _SMS_SECTIONS:
        section = ctx.get(name)
        if not isinstance(section, Mapping):
            continue
        long_fields = {
            key: value[: SMS_FIELD_MAX - len(_ELLIPSIS)].rstrip() + _ELLIPSIS
            for key, value in section.items()
            if isinstance(value, str) and len(value) > SMS_FIELD_MAX
        }
        if long_fields:
            changed[name] = {**section, **long_fields}
    return {**ctx, **changed} if changed else ctx


def sms_length(body: str) -> int:
    """The length of ``body`` in UTF-16 code units, as ``MAX_SMS_LENGTH`` counts it."""
    return len(body.encode("utf-16-le")) // 2


def cap_sms(body: str, limit: int = MAX_SMS_LENGTH) -> str:
    """``body`` if it fits ``limit`` UTF-16 code units, else its start and ``...``.

    Never splits a character (an emoji's two code units stay together).
    """
    if len(body) * 2 <= limit or sms_length(body) <= limit:
        return body
    room = limit - len(_ELLIPSIS)
    used = 0
    for end, char in enumerate(body):
        used += 2 if ord(char) > 0xFFFF else 1
        if used > room:
            return body[:end].rstrip() + _ELLIPSIS
    return body  # unreachable: the body was over the limit
