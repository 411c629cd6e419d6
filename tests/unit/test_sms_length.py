"""An SMS body never exceeds 1,600 characters; the shop's own text is shortened first.

Twilio refuses a longer body (and bills every segment of one up to that). A shop name of
1,700 characters used to make a 1,770-character SMS. Now the fields shops and customers
typed are cut before the template renders, so the message still says what it is for
(the time, the service) and the hard cap on the rendered body only catches what the
fields alone cannot explain: a shop template that repeats them, or is long itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgnotify.channels.base import SmsMessage
from pgnotify.compose import Composer
from pgnotify.context import build_context
from pgnotify.segments import (
    MAX_SMS_LENGTH,
    SMS_FIELD_MAX,
    cap_sms,
    count_segments,
    shorten_for_sms,
    sms_length,
)
from pgnotify.settings import load_settings
from pgnotify.templates import TemplateRenderer
from tests.samples import SHOP_ID, claimed, raw

KINDS = TemplateRenderer().kinds
LONG = "Peluquería " + "Muy Larga " * 169  # 1,701 characters


@pytest.fixture(scope="module")
def composer() -> Composer:
    return Composer(
        load_settings(_env_file=None, FROM_EMAIL="noreply@pgnotify.example"), TemplateRenderer()
    )


def sms(composer: Composer, kind: str, context: dict[str, Any]) -> str:
    message = composer.compose(claimed(kind, "sms", recipient="+34600111222", context=context))
    assert isinstance(message, SmsMessage)
    return message.body


@pytest.mark.parametrize("kind", KINDS)
def test_a_1700_character_shop_name_gives_an_sms_within_the_limit_that_keeps_its_message(
    composer: Composer, kind: str
) -> None:
    """The shop name is shortened, not the message: the time (or the amount) and the
    service are still in the body, and the body is within 1,600 characters."""
    body = sms(composer, kind, raw(shop={"name": LONG}))
    assert sms_length(body) <= MAX_SMS_LENGTH
    assert "Muy Larga Muy Larga" in body
    assert "Haircut" in body
    assert "15:30 CET" in body or "45.00" in body or "45,00" in body


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("locale", ["en", "es"])
def test_every_field_a_shop_or_customer_typed_at_5000_characters_still_fits(
    composer: Composer, kind: str, locale: str
) -> None:
    """Name, address, staff, service, customer name and cancellation reason all huge at
    once (emoji included, so the body is UCS-2): each is cut, the body fits."""
    huge = "🙂 Ω" * 1250
    context = raw(
        shop={"name": huge, "address": huge},
        staff={"name": huge},
        service={"name": huge},
        customer={"name": huge, "locale": locale},
        booking={"cancellation_reason": huge},
    )
    body = sms(composer, kind, context)
    assert sms_length(body) <= MAX_SMS_LENGTH
    # What the message is about comes after the huge fields, and survived: they were cut.
    assert ("15:30" in body) or ("45" in body)


def test_a_shop_template_that_repeats_a_field_is_cut_by_the_hard_cap(
    tmp_path: Path,
) -> None:
    """The last resort: a shop's own template printing its (already shortened) name twenty
    times is cut to the limit, ending with `...`."""
    folder = tmp_path / "shops" / SHOP_ID / "en" / "booking_confirmed"
    folder.mkdir(parents=True)
    (folder / "sms.txt").write_text("{% for i in range(20) %}{{ shop.name }} {% endfor %}")
    shipped = TemplateRenderer().roots
    composer = Composer(
        load_settings(_env_file=None, FROM_EMAIL="noreply@pgnotify.example"),
        TemplateRenderer([tmp_path, *shipped]),
    )
    body = sms(composer, "booking_confirmed", raw(shop={"name": LONG}))
    assert sms_length(body) <= MAX_SMS_LENGTH
    assert body.endswith("...")
    assert sms_length(body) > MAX_SMS_LENGTH - 10  # cut at the limit, not far before it


def test_an_ordinary_context_is_returned_as_is_and_a_long_one_is_copied() -> None:
    """Shortening never changes the context it is given: one context serves the booking's
    email and in-app message too, which keep the full name."""
    ordinary = build_context(raw())
    assert shorten_for_sms(ordinary) is ordinary
    long = build_context(raw(shop={"name": LONG}, staff={"name": "Ana"}))
    short = shorten_for_sms(long)
    assert long["shop"]["name"] == LONG
    assert len(short["shop"]["name"]) == SMS_FIELD_MAX
    assert short["shop"]["name"].startswith("Peluquería Muy Larga") and short["shop"][
        "name"
    ].endswith("...")
    assert short["staff"] is long["staff"]  # sections with nothing to cut are shared


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=0, max_size=4000))
def test_the_hard_cap_keeps_what_fits_and_cuts_the_rest_at_a_character(body: str) -> None:
    """Within the limit a body is unchanged; over it, the result fits, is a prefix of the
    body plus `...`, and never splits a character (an emoji's two UTF-16 units)."""
    capped = cap_sms(body)
    if sms_length(body) <= MAX_SMS_LENGTH:
        assert capped == body
    else:
        assert sms_length(capped) <= MAX_SMS_LENGTH
        assert capped.endswith("...")
        assert body.startswith(capped[:-3])
        capped.encode("utf-8")  # no lone surrogate


def test_the_hard_cap_counts_emoji_as_two_units_and_keeps_a_gsm7_body_gsm7() -> None:
    emoji = cap_sms("😀" * 1000)
    assert sms_length(emoji) <= MAX_SMS_LENGTH and emoji.startswith("😀" * 798)
    plain = cap_sms("a" * 2000)
    assert len(plain) == MAX_SMS_LENGTH
    assert count_segments(plain).encoding == "GSM-7"
