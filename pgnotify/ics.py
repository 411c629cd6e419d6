"""iCalendar (RFC 5545) invitations for bookings, so a customer can add them to a calendar.

One VEVENT per booking with a stable UID (``<booking-id>@pgnotify``) and a SEQUENCE that
grows with each change of the booking: a calendar replaces the event it holds when a
reschedule or a cancellation arrives with a higher SEQUENCE, instead of adding a second
one. The SEQUENCE is the row's ``ics_sequence``: the booking's version (a small counter
SQL bumps on each change of its status or start time) frozen when the invitation was
queued, so changes within one second still supersede each other and a retry sends the
same value.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from pgnotify.context import parse_timestamp

ICS_METHODS = {
    "booking_confirmed": "REQUEST",
    "booking_rescheduled": "REQUEST",
    "booking_cancelled": "CANCEL",
}
"""Kinds that carry an invitation, and its METHOD; other kinds send no ICS.

``pgnotify.enqueue`` (sql/001_baseline.sql) freezes ``ics_sequence`` for the email rows
of exactly these kinds."""

MAX_SEQUENCE = 2**31 - 1
"""RFC 5545 SEQUENCE is an INTEGER: a signed 32-bit value, as calendar clients store it."""


def escape_text(value: str) -> str:
    """Escape a TEXT value: backslash, ``;``, ``,`` and newlines (RFC 5545 §3.3.11)."""
    return (
        value.replace("\\", "\\\\")
        .replace(";", "\\;")
        .replace(",", "\\,")
        .replace("\r\n", "\\n")
        .replace("\r", "\\n")
        .replace("\n", "\\n")
    )


def _param(value: str) -> str:
    """A parameter value (CN=...) cannot be escaped, only quoted: drop what breaks quoting."""
    cleaned = "".join(c for c in value if c >= " " and c not in '"\x7f')
    return f'"{cleaned}"'


def fold_line(line: str) -> str:
    """Fold a content line at 75 octets (CRLF + space), never inside a UTF-8 character."""
    encoded = line.encode("utf-8")
    if len(encoded) <= 75:
        return line
    pieces: list[str] = []
    start = 0
    limit = 75
    while start < len(encoded):
        end = min(start + limit, len(encoded))
        while end < len(encoded) and (encoded[end] & 0xC0) == 0x80:
            end -= 1  # step back out of a multi-byte character
        pieces.append(encoded[start:end].decode("utf-8"))
        start = end
        limit = 74  # continuation lines start with a space, which counts
    return "\r\n ".join(pieces)


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def build_ics(
    method: str,
    raw: Mapping[str, Any],
    *,
    organizer_email: str,
    attendee_email: str | None,
    now: datetime | None = None,
    sequence: int | None = None,
) -> str:
    """Render a VCALENDAR with one VEVENT for the booking in ``raw`` (the SQL context).

    ``method`` is ``REQUEST`` or ``CANCEL`` (which also sets ``STATUS:CANCELLED``).
    ``sequence`` is the notification's frozen ``ics_sequence``; without it (a preview) the
    context's ``booking.sequence`` is used, else 0; either is clamped to 0..2^31-1.
    Returns CRLF-terminated, folded text; raises ``ValueError`` without a start time.
    """
    booking: Mapping[str, Any] = raw.get("booking") or {}
    shop: Mapping[str, Any] = raw.get("shop") or {}
    staff: Mapping[str, Any] = raw.get("staff") or {}
    service: Mapping[str, Any] = raw.get("service") or {}
    customer: Mapping[str, Any] = raw.get("customer") or {}
    starts = parse_timestamp(booking.get("starts_at"))
    if starts is None:
        raise ValueError("booking has no starts_at")
    ends = parse_timestamp(booking.get("ends_at"))
    if ends is None:
        ends = starts + timedelta(minutes=int(booking.get("duration_minutes") or 0))
    summary = f"{service.get('name') or 'Appointment'} – {shop.get('name') or ''}".strip(" –")
    description = ", ".join(
        part for part in (service.get("name"), staff.get("name"), shop.get("name")) if part
    )
    if sequence is None:
        sequence = int(booking.get("sequence") or 0)
    # Clamped, never refused: a calendar that misses one update is better than no email.
    sequence = min(max(sequence, 0), MAX_SEQUENCE)
    cancelled = method == "CANCEL"
    lines = [
        "BEGIN:VCALENDAR",
        "VERSION:2.0",
        "PRODID:-//pgnotify//booking notifications//EN",
        "CALSCALE:GREGORIAN",
        f"METHOD:{method}",
        "BEGIN:VEVENT",
        f"UID:{booking.get('id')}@pgnotify",
        f"SEQUENCE:{sequence}",
        f"DTSTAMP:{_utc(now or datetime.now(UTC))}",
        f"DTSTART:{_utc(starts)}",
        f"DTEND:{_utc(ends)}",
        f"SUMMARY:{escape_text(summary)}",
        f"DESCRIPTION:{escape_text(description)}",
        f"STATUS:{'CANCELLED' if cancelled else 'CONFIRMED'}",
        f"ORGANIZER;CN={_param(str(shop.get('name') or ''))}:mailto:{organizer_email}",
    ]
    if shop.get("address"):
        lines.append(f"LOCATION:{escape_text(str(shop['address']))}")
    if attendee_email:
        lines.append(
            f"ATTENDEE;CN={_param(str(customer.get('name') or ''))};ROLE=REQ-PARTICIPANT;"
            f"PARTSTAT={'DECLINED' if cancelled else 'ACCEPTED'};RSVP=FALSE:"
            f"mailto:{attendee_email}"
        )
    lines += ["TRANSP:OPAQUE", "END:VEVENT", "END:VCALENDAR"]
    return "".join(fold_line(line) + "\r\n" for line in lines)
