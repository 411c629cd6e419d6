"""Signed links (pgnotify/links.py) against the formula of CONTRACT.md §6, computed here
from hashlib, hmac and base64 directly: what an application in any language would write."""

from __future__ import annotations

import base64
import hashlib
import hmac
from uuid import UUID, uuid4

from hypothesis import given
from hypothesis import strategies as st

from pgnotify.context import build_context
from pgnotify.links import LinkSigner, make_token, manage_url, pay_url, verify_token
from tests.samples import BOOKING_ID, raw

SECRET = "correct horse battery staple"


def independent_token(secret: str, booking_id: str) -> str:
    """base64url without padding of HMAC-SHA256(secret, lowercase hyphenated id)."""
    mac = hmac.new(secret.encode(), booking_id.lower().encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def test_the_token_is_the_contracts_formula_whatever_form_the_id_is_given_in() -> None:
    expected = independent_token(SECRET, BOOKING_ID)
    assert len(expected) == 43 and "=" not in expected
    for form in (BOOKING_ID, BOOKING_ID.upper(), BOOKING_ID.replace("-", ""), UUID(BOOKING_ID)):
        assert make_token(SECRET, form) == expected
    assert make_token(SECRET.encode(), BOOKING_ID) == expected


@given(st.uuids(), st.text(min_size=1, max_size=64))
def test_any_booking_and_secret_match_the_independent_computation(
    booking_id: UUID, secret: str
) -> None:
    token = make_token(secret, booking_id)
    assert token == independent_token(secret, str(booking_id))
    assert verify_token(secret, booking_id, token)


def test_verify_refuses_another_booking_another_secret_and_garbage() -> None:
    token = make_token(SECRET, BOOKING_ID)
    assert verify_token(SECRET, BOOKING_ID, token)
    assert not verify_token(SECRET, str(uuid4()), token)
    assert not verify_token("another secret", BOOKING_ID, token)
    assert not verify_token(SECRET, BOOKING_ID, token[:-1])
    assert not verify_token(SECRET, BOOKING_ID, token + "=")
    assert not verify_token(SECRET, BOOKING_ID, "")
    assert not verify_token(SECRET, BOOKING_ID, "ü" * 43)  # non-ASCII: False, no exception
    assert not verify_token(SECRET, "not-a-uuid", token)


def test_the_urls_carry_the_id_and_token_under_the_base() -> None:
    token = independent_token(SECRET, BOOKING_ID)
    base = "https://book.example.com/app"
    assert manage_url(base, SECRET, BOOKING_ID.upper()) == (
        f"{base}/bookings/{BOOKING_ID}?token={token}"
    )
    assert pay_url(base + "/", SECRET, BOOKING_ID) == (
        f"{base}/bookings/{BOOKING_ID}/pay?token={token}"
    )


def test_the_context_has_both_links_when_configured_and_empty_strings_otherwise() -> None:
    signer = LinkSigner("https://book.example.com", SECRET.encode())
    assert SECRET not in repr(signer)
    ctx = build_context(raw(), links=signer)
    token = independent_token(SECRET, BOOKING_ID)
    assert ctx["manage_url"] == f"https://book.example.com/bookings/{BOOKING_ID}?token={token}"
    assert ctx["pay_url"] == f"https://book.example.com/bookings/{BOOKING_ID}/pay?token={token}"
    bare = build_context(raw())
    assert (bare["manage_url"], bare["pay_url"]) == ("", "")
    # A booking id that is not a UUID (a hand-made preview) gets no link, not an error.
    odd = build_context(raw(booking={"id": "b-1"}), links=signer)
    assert (odd["manage_url"], odd["pay_url"]) == ("", "")


def test_the_address_is_a_map_search_and_only_an_e164_phone_a_tel_link() -> None:
    ctx = build_context(raw(shop={"address": "Calle Mayor 12, Madrid & Co"}))
    assert ctx["maps_url"] == (
        "https://www.google.com/maps/search/?api=1&query=Calle%20Mayor%2012%2C%20Madrid%20%26%20Co"
    )
    assert ctx["tel_url"] == "tel:+34911234567"
    odd = build_context(raw(shop={"address": None, "phone": "call 555-1234"}))
    assert (odd["maps_url"], odd["tel_url"]) == ("", "")
