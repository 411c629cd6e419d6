"""Calendar invitations: stable identity, RFC 5545 escaping and folding."""

from __future__ import annotations

from datetime import UTC, datetime

from pgnotify.ics import build_ics, escape_text, fold_line
from tests.samples import BOOKING_ID, raw

NOW = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


def _ics(method: str = "REQUEST", **changes: dict[str, object]) -> str:
    return build_ics(
        method,
        raw(**changes),
        organizer_email="noreply@x.example",
        attendee_email="m@x.example",
        now=NOW,
    )


def _unfold(text: str) -> list[str]:
    return text.replace("\r\n ", "").split("\r\n")


def test_a_confirmation_is_a_request_with_a_stable_uid_and_the_booking_sequence() -> None:
    lines = _unfold(_ics())
    assert "METHOD:REQUEST" in lines
    assert f"UID:{BOOKING_ID}@pgnotify" in lines
    assert "SEQUENCE:2" in lines
    assert "STATUS:CONFIRMED" in lines
    assert "DTSTART:20261201T143000Z" in lines and "DTEND:20261201T151500Z" in lines


def test_a_cancellation_cancels_the_same_event_with_a_higher_sequence() -> None:
    lines = _unfold(_ics("CANCEL", booking={"sequence": 3}))
    assert "METHOD:CANCEL" in lines and "STATUS:CANCELLED" in lines
    assert f"UID:{BOOKING_ID}@pgnotify" in lines and "SEQUENCE:3" in lines


def test_every_line_ends_in_crlf_and_no_line_exceeds_75_octets() -> None:
    text = _ics(shop={"address": "Ñandú street " * 20})
    assert text.endswith("\r\n") and "\n" not in text.replace("\r\n", "")
    assert all(len(line.encode()) <= 75 for line in text.split("\r\n"))
    assert "LOCATION:" + escape_text("Ñandú street " * 20) in _unfold(text)


def test_text_values_escape_commas_semicolons_backslashes_and_newlines() -> None:
    assert escape_text("a,b;c\\d\ne\r\nf") == "a\\,b\\;c\\\\d\\ne\\nf"
    lines = _unfold(_ics(shop={"address": "1 Main St,\nSuite; 2"}))
    assert "LOCATION:1 Main St\\,\\nSuite\\; 2" in lines


def test_hostile_names_cannot_add_properties() -> None:
    text = _ics(
        shop={"name": 'Evil"\r\nATTENDEE:mailto:x@evil'},
        customer={"name": "Bob\r\nORGANIZER:mailto:x@evil"},
    )
    assert sum(line.startswith("ORGANIZER") for line in _unfold(text)) == 1
    assert sum(line.startswith("ATTENDEE") for line in _unfold(text)) == 1


def test_folding_never_splits_a_utf8_character() -> None:
    line = "SUMMARY:" + "é" * 100
    folded = fold_line(line)
    assert folded.replace("\r\n ", "") == line
    assert all(len(part.encode()) <= 75 for part in folded.split("\r\n"))


def test_the_frozen_sequence_of_the_notification_wins_over_the_context() -> None:
    """The row's `ics_sequence` (frozen when queued) is the SEQUENCE; the context's value
    serves only previews, which have no row."""
    text = build_ics(
        "REQUEST",
        raw(booking={"sequence": 1_764_000_000}),
        organizer_email="noreply@x.example",
        attendee_email="m@x.example",
        now=NOW,
        sequence=4,
    )
    assert "SEQUENCE:4" in _unfold(text)


def test_a_sequence_outside_a_signed_32_bit_integer_is_clamped_never_sent() -> None:
    """Calendar clients store SEQUENCE in 32 bits: the epoch-seconds value of 2038 and
    later must not reach them."""
    assert "SEQUENCE:2147483647" in _unfold(_ics(booking={"sequence": 2**31 + 5}))
    assert "SEQUENCE:0" in _unfold(_ics(booking={"sequence": -3}))
