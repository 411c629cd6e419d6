"""SMS arithmetic: how many segments a body costs, and whether a number is E.164.

Carriers bill per segment. A body made only of GSM 03.38 characters is sent as GSM-7
(160 septets in one segment, 153 per segment once concatenated, because the UDH takes
7); the characters of the extension table (``^{}\\[~]|€`` and form feed) take two
septets each. One character outside that alphabet switches the whole message to UCS-2: 70 code
units in one segment, 67 per segment when concatenated, counted in UTF-16 code units
(an emoji is two).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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
            units = len(body.encode("utf-16-le")) // 2
            return SegmentCount("UCS-2", units, _segments(units, 70, 67))
    return SegmentCount("GSM-7", septets, _segments(septets, 160, 153))


# Lookalikes outside GSM-7 and their GSM-7 stand-ins, as Twilio's "smart encoding" does:
# Spanish á, í, ó, ú are not in the GSM alphabet, and one of them triples the cost.
_GSM7_FOLD = str.maketrans(
    {
        "á": "a",
        "í": "i",
        "ó": "o",
        "ú": "u",
        "Á": "A",
        "Í": "I",
        "Ó": "O",
        "Ú": "U",
        "â": "a",
        "ê": "e",
        "î": "i",
        "ô": "o",
        "û": "u",
        "ë": "e",
        "ï": "i",
        "ã": "a",
        "õ": "o",
        "ç": "c",
        "Ê": "E",
        "È": "E",
        "À": "A",
        "Ã": "A",
        "Õ": "O",
        "‘": "'",
        "’": "'",
        "‚": "'",
        "“": '"',
        "”": '"',
        "„": '"',
        "«": '"',
        "»": '"',
        "–": "-",
        "—": "-",
        "−": "-",
        "…": "...",
        "\u00a0": " ",
        "\u2009": " ",
        "\u202f": " ",
        "·": "-",
        "•": "-",
        "\t": " ",
    }
)


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
    if units <= single:
        return 1
    return -(-units // multi)


def is_e164(number: str) -> bool:
    """True when ``number`` is ``+`` and 2 to 15 digits, the first not zero."""
    return bool(_E164.fullmatch(number))
