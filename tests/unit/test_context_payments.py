"""The context of refunds, receipts and cancellations: the reference, the paid and refunded
totals, the payment's date (pure, no database)."""

from __future__ import annotations

import pytest

from pgnotify.context import build_context, format_moment, format_totals, shop_zone
from tests.samples import raw


def test_the_reference_comes_from_sql_and_is_blank_without_it() -> None:
    assert build_context(raw(booking={"reference": "QN7PVUCF"}))["reference"] == "QN7PVUCF"
    assert build_context(raw())["reference"] == ""
    assert build_context(raw(booking={"reference": 12}))["reference"] == ""


def test_paid_and_refunded_are_each_stated_when_not_zero() -> None:
    """A full refund (the payment changed to `refunded`) leaves nothing `succeeded`: the
    refund is stated alone, never beside a "paid 0.00" that would tell the customer they
    never paid; a partial refund (its own `refunded` row) shows both."""
    ctx = build_context(raw(booking={"paid": None, "refunded": {"EUR": 4500}}))
    assert (ctx["paid"], ctx["refunded"]) == ("", "€45.00")
    ctx = build_context(raw(booking={"paid": {"EUR": 4500}, "refunded": None}))
    assert (ctx["paid"], ctx["refunded"]) == ("€45.00", "")
    ctx = build_context(raw(booking={"paid": {"EUR": 4500}, "refunded": {"EUR": 1000}}))
    assert (ctx["paid"], ctx["refunded"]) == ("€45.00", "€10.00")


@pytest.mark.parametrize("totals", [None, {}, {"EUR": 0}, "garbage", {"EUR": "45"}])
def test_nothing_paid_and_nothing_refunded_states_neither(totals: object) -> None:
    ctx = build_context(raw(booking={"paid": totals, "refunded": totals}))
    assert (ctx["paid"], ctx["refunded"]) == ("", "")


def test_totals_of_several_currencies_are_listed_the_bookings_first() -> None:
    assert format_totals({"USD": 700, "EUR": 3000}, "en", first="EUR") == "€30.00 + $7.00"
    assert format_totals({"USD": 700, "GBP": 100}, "en", first="EUR") == "£1.00 + $7.00"
    assert format_totals({"EUR": 3000}, "es", first="EUR") == "30,00 €"


def test_the_payment_date_is_shown_in_the_shop_zone_and_language() -> None:
    payment = {"updated_at": "2026-11-20T10:05:00+00:00"}
    assert build_context(raw(payment=payment))["payment_date"] == (
        "Friday, 20 November 2026, 11:05 CET"
    )
    spanish = build_context(raw(payment=payment, customer={"locale": "es"}))
    assert spanish["payment_date"] == "viernes, 20 de noviembre de 2026, 11:05 CET"
    assert build_context(raw(payment=None))["payment_date"] == ""


@pytest.mark.parametrize(
    "value",
    ["infinity", "-infinity", "294276-12-31T23:59:59+00:00", "0001-01-01T00:00:00+00:00", None],
)
def test_a_payment_date_that_cannot_be_shown_is_left_out(value: str | None) -> None:
    """Payment times are the application's data, checked by nothing upstream: one at the
    edge of the calendar (year 1 shown twelve hours west) must not fail the message."""
    assert format_moment(value, shop_zone("Etc/GMT+12"), "en") == ""
