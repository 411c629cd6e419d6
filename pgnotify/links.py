"""Signed links to a booking, for the application's own pages (CONTRACT.md §6).

The token proves that whoever holds the link was sent it by us: ``token`` =
base64url, without padding, of HMAC-SHA256(secret, the booking id as lowercase hyphenated
text). The application verifies it with the same formula (``verify_token`` for Python
applications), so no table of issued tokens is needed and every message about a booking
carries the same link. Pure functions: no settings, no I/O.
"""

from __future__ import annotations

import base64
import hmac
from dataclasses import dataclass, field
from uuid import UUID

__all__ = ["LinkSigner", "make_token", "manage_url", "pay_url", "verify_token"]


def _key(secret: str | bytes) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else secret


def _subject(booking_id: UUID | str) -> bytes:
    # UUID() accepts upper case, braces and no hyphens; str() of it is the one canonical form.
    return str(booking_id if isinstance(booking_id, UUID) else UUID(str(booking_id))).encode()


def make_token(secret: str | bytes, booking_id: UUID | str) -> str:
    """The token of a booking: base64url without padding of HMAC-SHA256 (43 characters).

    Raises ``ValueError`` when ``booking_id`` is not a UUID.
    """
    digest = hmac.digest(_key(secret), _subject(booking_id), "sha256")  # one-shot, in C
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def verify_token(secret: str | bytes, booking_id: UUID | str, token: str) -> bool:
    """Whether ``token`` is the booking's token, compared in constant time.

    False (never an exception) for a malformed booking id or token, so an application can
    pass request parameters straight in.
    """
    try:
        expected = make_token(secret, booking_id)
    except ValueError:
        return False
    if not isinstance(token, str):
        return False
    return hmac.compare_digest(expected.encode("ascii"), token.encode("utf-8", "replace"))


def manage_url(base: str, secret: str | bytes, booking_id: UUID | str) -> str:
    """``{base}/bookings/{id}?token={token}``: where the customer sees or changes a booking."""
    subject = _subject(booking_id).decode()
    return f"{base.rstrip('/')}/bookings/{subject}?token={make_token(secret, subject)}"


def pay_url(base: str, secret: str | bytes, booking_id: UUID | str) -> str:
    """``{base}/bookings/{id}/pay?token={token}``: where the customer pays again."""
    subject = _subject(booking_id).decode()
    return f"{base.rstrip('/')}/bookings/{subject}/pay?token={make_token(secret, subject)}"


@dataclass(frozen=True)
class LinkSigner:
    """The configured base URL and secret; the secret stays out of ``repr``."""

    base_url: str
    secret: bytes = field(repr=False)

    def urls(self, booking_id: object) -> dict[str, str]:
        """``manage_url`` and ``pay_url`` of a booking; empty strings if the id is not a UUID."""
        try:
            subject = str(booking_id if isinstance(booking_id, UUID) else UUID(str(booking_id)))
        except ValueError:
            return {"manage_url": "", "pay_url": ""}
        # One HMAC for both links (this runs once per booking per batch).
        token = make_token(self.secret, subject)
        page = f"{self.base_url}/bookings/{subject}"
        return {"manage_url": f"{page}?token={token}", "pay_url": f"{page}/pay?token={token}"}
