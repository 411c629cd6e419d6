"""SMS segment arithmetic: what a carrier will bill."""

from __future__ import annotations

import pytest

from pgnotify.segments import count_segments, fold_to_gsm7, is_e164


@pytest.mark.parametrize(
    ("body", "encoding", "units", "segments"),
    [
        ("", "GSM-7", 0, 1),
        ("a" * 160, "GSM-7", 160, 1),
        ("a" * 161, "GSM-7", 161, 2),
        ("a" * 306, "GSM-7", 306, 2),
        ("a" * 307, "GSM-7", 307, 3),
        ("€" * 80, "GSM-7", 160, 1),  # extension table: two septets each
        ("{" + "a" * 159, "GSM-7", 161, 2),
        ("ñandú", "UCS-2", 5, 1),  # ú is not GSM-7
        ("á" * 70, "UCS-2", 70, 1),
        ("á" * 71, "UCS-2", 71, 2),
        ("á" * 134, "UCS-2", 134, 2),
        ("á" * 135, "UCS-2", 135, 3),
        ("😀" * 35, "UCS-2", 70, 1),  # an emoji is two UTF-16 code units
        ("😀" * 36, "UCS-2", 72, 2),
    ],
)
def test_segments_follow_gsm7_and_ucs2_limits(
    body: str, encoding: str, units: int, segments: int
) -> None:
    count = count_segments(body)
    assert (count.encoding, count.units, count.segments) == (encoding, units, segments)


def test_spanish_accents_fold_to_gsm7_when_that_makes_the_whole_text_fit() -> None:
    assert fold_to_gsm7("está confirmada — ¡gracias!") == "esta confirmada - ¡gracias!"
    assert count_segments(fold_to_gsm7("á" * 100)).encoding == "GSM-7"


def test_text_that_stays_ucs2_keeps_its_accents() -> None:
    assert fold_to_gsm7("Ольга está aquí") == "Ольга está aquí"


@pytest.mark.parametrize(
    ("number", "valid"),
    [
        ("+15551234567", True),
        ("+34600111222", True),
        ("15551234567", False),
        ("+0123", False),
        ("+1 555 123 4567", False),
        ("+1234567890123456", False),
        ("+15551234567\n", False),
    ],
)
def test_e164_numbers(number: str, valid: bool) -> None:
    assert is_e164(number) is valid
