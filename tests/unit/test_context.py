"""The template context: dates in the shop's zone, money from cents, languages."""

from __future__ import annotations

import pytest

from pgnotify.context import build_context, format_duration, format_money, resolve_locale
from tests.samples import raw


def test_dates_are_shown_in_the_shop_timezone_with_the_zone_named() -> None:
    ctx = build_context(raw(booking={"starts_at": "2026-12-01T14:30:00+00:00"}))
    assert ctx["date"] == "Tuesday, 1 December 2026"
    assert ctx["time"] == "15:30 CET"
    assert ctx["end_time"] == "16:15 CET"
    assert ctx["short_date"] == "Tue 1 Dec"
    assert ctx["timezone"] == "Europe/Madrid"


def test_summer_time_is_named_too() -> None:
    ctx = build_context(raw(booking={"starts_at": "2026-07-01T14:30:00+00:00"}))
    assert ctx["time"] == "16:30 CEST"


def test_spanish_customers_get_spanish_dates() -> None:
    ctx = build_context(raw(customer={"locale": "es-MX"}))
    assert ctx["locale"] == "es"
    assert ctx["date"] == "martes, 1 de diciembre de 2026"
    assert ctx["short_date"] == "mar 1 dic"
    assert ctx["price"] == "45,00 €"


def test_the_customer_locale_wins_over_the_shop_locale_and_falls_back_to_it() -> None:
    assert build_context(raw(shop={"locale": "es"}))["locale"] == "es"
    assert build_context(raw(shop={"locale": "es"}, customer={"locale": "en"}))["locale"] == "en"


def test_a_message_to_the_shop_is_in_the_shops_language_whatever_the_customers() -> None:
    shop_es_customer_en = raw(shop={"locale": "es"}, customer={"locale": "en"})
    ctx = build_context(shop_es_customer_en, audience="shop")
    assert (ctx["locale"], ctx["date"]) == ("es", "martes, 1 de diciembre de 2026")
    assert build_context(raw(customer={"locale": "es"}), audience="shop")["locale"] == "en"
    assert build_context(shop_es_customer_en, audience="shop", locale="en")["locale"] == "en"


def test_an_unknown_timezone_falls_back_to_utc_instead_of_crashing() -> None:
    ctx = build_context(raw(shop={"timezone": "Mars/Olympus_Mons"}))
    assert ctx["time"] == "14:30 UTC"
    assert ctx["timezone"] == "UTC"


def test_zones_without_an_abbreviation_show_their_offset() -> None:
    ctx = build_context(raw(shop={"timezone": "America/Sao_Paulo"}))
    assert ctx["time"] == "11:30 UTC-03"


def test_missing_sections_and_nulls_do_not_crash() -> None:
    ctx = build_context({"booking": None, "shop": None, "payment": None})
    assert ctx["date"] == "" and ctx["price"] == "" and ctx["payment"] is None


def test_ends_at_is_derived_from_the_duration_when_absent() -> None:
    ctx = build_context(raw(booking={"ends_at": None, "duration_minutes": 90}))
    assert ctx["end_time"] == "17:00 CET"
    assert ctx["duration"] == "1 h 30 min"


@pytest.mark.parametrize(
    ("cents", "currency", "locale", "text"),
    [
        (4500, "USD", "en", "$45.00"),
        (123450, "EUR", "en", "€1,234.50"),
        (999, "GBP", "en", "£9.99"),
        (50000, "MXN", "en", "MX$500.00"),
        (1500, "CHF", "en", "15.00 CHF"),
        (1500, "JPY", "en", "1,500 JPY"),
        (123450, "EUR", "es", "1.234,50 €"),
        (4500, "USD", "es", "45,00 $"),
        (-250, "USD", "en", "-$2.50"),
    ],
)
def test_money_is_formatted_from_cents(cents: int, currency: str, locale: str, text: str) -> None:
    assert format_money(cents, currency, locale) == text


@pytest.mark.parametrize(
    ("minutes", "text"), [(45, "45 min"), (60, "1 h"), (90, "1 h 30 min"), (0, "0 min")]
)
def test_durations(minutes: int, text: str) -> None:
    assert format_duration(minutes) == text


@pytest.mark.parametrize(
    ("candidates", "locale"),
    [
        (("es_ES",), "es"),
        ((None, "ES"), "es"),
        (("../../etc/passwd", "fr"), "fr"),
        ((None, None), "en"),
        (("", "!!"), "en"),
    ],
)
def test_locale_resolution_never_yields_a_path(
    candidates: tuple[str | None, ...], locale: str
) -> None:
    assert resolve_locale(*candidates) == locale


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("#0F766E", "#0f766e"),
        ("#0f766e", "#0f766e"),
        (None, "#2563eb"),
        ("red", "#2563eb"),
        ("#0f766e;background:url(x)", "#2563eb"),
        ("#fff", "#2563eb"),
        (1193046, "#2563eb"),
    ],
)
def test_only_a_hex_colour_becomes_the_accent_anything_else_the_default(
    value: object, shown: str
) -> None:
    assert build_context(raw(shop={"brand_color": value}))["brand_color"] == shown


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("https://cdn.example.com/logo.png", "https://cdn.example.com/logo.png"),
        ("http://cdn.example.com/logo.png", ""),
        ("javascript:alert(1)", ""),
        ('https://x.example/a.png" onerror="alert(1)', ""),
        ("https://", ""),
        (None, ""),
    ],
)
def test_only_an_https_logo_is_shown(value: object, shown: str) -> None:
    assert build_context(raw(shop={"logo_url": value}))["logo_url"] == shown


def test_a_time_range_names_its_zone_once_unless_the_zone_changes_between() -> None:
    assert build_context(raw())["time_range"] == "15:30–16:15 CET"
    # 02:30 CEST + 45 min on the night clocks go back (Madrid, 31 October 2027).
    night = raw(booking={"starts_at": "2027-10-31T00:30:00+00:00", "ends_at": None})
    assert build_context(night)["time_range"] == "02:30 CEST–02:15 CET"


def test_the_former_start_is_shown_only_after_a_move() -> None:
    assert build_context(raw())["previous_date"] == ""
    moved = build_context(raw(booking={"previous_starts_at": "2026-11-30T16:48:00+00:00"}))
    assert (moved["previous_date"], moved["previous_time_range"]) == (
        "Monday, 30 November 2026",
        "17:48–18:33 CET",
    )


@pytest.mark.parametrize(
    ("accent", "text"),
    [
        ("#2563eb", "#ffffff"),
        ("#0f766e", "#ffffff"),
        ("#facc15", "#18181b"),
        ("#ffffff", "#18181b"),
    ],
)
def test_the_text_on_the_accent_is_white_or_black_whichever_reads(accent: str, text: str) -> None:
    assert build_context(raw(shop={"brand_color": accent}))["brand_text_color"] == text
