"""One rule for a valid email address, in SQL and in Python alike.

The triggers skip a customer whose email is invalid (`pgnotify.is_valid_email`, through
`pgnotify.recipient_problem`); the sender refuses what `mime.is_valid_address` rejects.
When the two disagreed, an address the triggers queued was refused at send time and the
row ended `failed` (a dead letter for an operator) instead of `skipped` with the reason.
One corpus goes through both, item by item, and random text too.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgnotify.channels.mime import is_valid_address
from tests.factories import make_booking, make_world, notifications

Conn = psycopg.Connection[Any]

VALID = [
    "a@b.c",
    "ana@example.com",
    "o'brien@example.ie",
    "first.last+tag@mail.example.co.uk",
    "noreply@localhost",  # no dot in the domain: SMTP accepts it (FROM_EMAIL's default)
    "user@xn--bcher-kva.de",  # an international domain in its ASCII (xn--) form
    "x@1.2.3.4",
    "!#$%&'*+/=?^_`{|}~-@example.com",
    "a" * 64 + "@example.com",  # the longest local part
    "a@" + "b" * 63 + ".com",  # the longest label
    "a@" + ".".join(["b" * 63] * 3) + "." + "c" * 60,  # 254 characters in all
    "UPPER@EXAMPLE.COM",
    "a-b@c-d.e-f",
    "a.-b@example.com",  # a hyphen next to a dot is fine in the local part
    "a-.b@example.com",
    "a@" + "b" * 63 + "." + "c" * 63,  # a domain over 63 characters, each label within
]
INVALID = [
    "",
    " ",
    "plain",
    "@example.com",
    "a@",
    "a@@b.c",
    "a@b@c.d",
    ".a@b.c",
    "a.@b.c",
    "ana..b@example.com",  # the old SQL pattern queued it; the sender refused it
    "a@.b.c",
    "a@b..c",
    "a@b.c.",
    "a@-b.c",
    "a@b-.c",
    "a@b.-c",
    "a@b.c-",
    "a@-",
    "a@" + "b" * 10 + "." + "c" * 64,  # the label one over is not the first
    "a@b_c.d",
    '"quoted"@example.com',
    '"a b"@example.com',
    "a\\b@example.com",
    "a b@example.com",
    " a@b.c",
    "a@b.c ",
    "a@b.c\n",
    "a@b.c\r\nBcc: x@evil.example",
    "a\t@b.c",
    "zoë@example.com",  # the old SQL pattern queued it; we do not speak SMTPUTF8
    "user@bücher.de",  # an international domain not in its xn-- form
    "ａ@b.c",  # fullwidth letter
    "a@b．c",  # fullwidth full stop
    "a@b.c\u200b",  # zero-width space
    "\u202eevil@example.com",  # right-to-left override
    "\u00a0a@b.c",
    "a@b.c\u2028",
    "😀@example.com",
    "ﬀ@example.com",
    "İ@example.com",
    "a@b.c, d@e.f",
    "<a@b.c>",
    "Bob <a@b.c>",
    "(comment)a@b.c",
    "a@[127.0.0.1]",
    "a@b.c; drop table pgnotify.notifications; --",
    "a" * 65 + "@example.com",  # local part one over
    "a@" + "b" * 64 + ".com",  # label one over
    "a@" + ".".join(["b" * 63] * 3) + "." + "c" * 61,  # 255 characters
    "x" * 10_000 + "@example.com",
    "a@" + "b" * 10_000 + ".com",
    "a@" + "b." * 200 + "com",
]


def sql_verdicts(db: Conn, addresses: list[str]) -> list[bool]:
    rows = db.execute(
        "select pgnotify.is_valid_email(a) from unnest(%s::text[]) with ordinality u (a, i)"
        " order by i",
        (addresses,),
    ).fetchall()
    return [verdict for (verdict,) in rows]


def test_sql_and_python_agree_on_every_address_of_the_corpus(db: Conn) -> None:
    """Each valid address is valid for both, each invalid one (hostile, unicode, quoted,
    spaced, too long, IDN not in xn-- form, ...) invalid for both."""
    corpus = VALID + INVALID
    expected = [True] * len(VALID) + [False] * len(INVALID)
    python = [is_valid_address(a) for a in corpus]
    assert dict(zip(corpus, python, strict=True)) == dict(zip(corpus, expected, strict=True))
    assert dict(zip(corpus, sql_verdicts(db, corpus), strict=True)) == dict(
        zip(corpus, python, strict=True)
    )


def test_null_is_not_a_valid_address(db: Conn) -> None:
    assert db.execute("select pgnotify.is_valid_email(null)").fetchone() == (False,)


# Text Postgres can hold (no NUL), biased towards address-like strings.
_CHARS = st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",))
_ADDRESSLIKE = st.builds(
    "{}{}{}".format,
    st.text(st.sampled_from("aZ9.-_+'\"@ é\n"), max_size=12),
    st.sampled_from(["@", "@@", ".", ""]),
    st.text(st.sampled_from("ab9.-_xn"), max_size=12),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.one_of(st.emails(), st.text(_CHARS, max_size=80), _ADDRESSLIKE), max_size=40))
def test_sql_and_python_agree_on_arbitrary_text(db: Conn, addresses: list[str]) -> None:
    """Random text, random near-addresses and valid addresses: the verdicts match."""
    python = [is_valid_address(a) for a in addresses]
    assert dict(zip(addresses, sql_verdicts(db, addresses), strict=True)) == dict(
        zip(addresses, python, strict=True)
    )


@pytest.mark.parametrize("email", ["ana..b@example.com", "zoë@example.com", "a@-b.c"])
def test_an_address_the_sender_would_refuse_is_skipped_at_enqueue_not_failed_later(
    db: Conn, email: str
) -> None:
    """Addresses the old SQL pattern let through (and the sender then refused, leaving a
    dead letter) are `skipped` with the reason when the booking is confirmed."""
    booking = make_booking(db, make_world(db, email=email))
    rows = [r for r in notifications(db, booking) if r["channel"] == "email"]
    assert rows
    assert {r["status"] for r in rows} == {"skipped"}
    assert {r["last_error"] for r in rows} == {"customer email is not a valid address"}


def test_an_address_without_a_dot_in_its_domain_is_queued(db: Conn) -> None:
    """`ana@localhost` is an address SMTP delivers: queued, as the sender accepts it."""
    booking = make_booking(db, make_world(db, email="ana@localhost"))
    rows = [r for r in notifications(db, booking) if r["channel"] == "email"]
    assert rows and {r["status"] for r in rows} == {"pending"}
