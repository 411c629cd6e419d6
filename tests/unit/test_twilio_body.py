"""The SMS request body we pre-encode is the one aiohttp's ``FormData`` would have sent."""

from __future__ import annotations

import aiohttp
from hypothesis import given
from hypothesis import strategies as st

from pgnotify.channels.sms import form_body

_VALUES = st.one_of(st.text(max_size=40), st.lists(st.text(max_size=10), max_size=3))


_NAMES = st.from_regex(r"[A-Za-z]{1,12}", fullmatch=True)  # twilio's parameter names


@given(st.dictionaries(_NAMES, _VALUES, min_size=1, max_size=6))
def test_form_body_is_what_formdata_encodes(data: dict[str, str | list[str]]) -> None:
    expected = aiohttp.FormData(data)()
    assert form_body(data) == expected._value
    assert expected.content_type == "application/x-www-form-urlencoded"


def test_what_is_not_a_mapping_of_strings_is_left_to_aiohttp() -> None:
    assert form_body(None) is None
    assert form_body({}) is None
    assert form_body({"Body": b"bytes"}) is None
    assert form_body({"MediaUrl": ["a", 1]}) is None
