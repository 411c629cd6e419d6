"""The email builder: exactly as safe as the stdlib's own (its speed is in ``make bench``).

Every field goes in, the stdlib parser (modern policy) reads the bytes back, and each
field must come back exactly as given, with no extra header and no extra recipient.
"""

from __future__ import annotations

from email.message import EmailMessage as StdMessage
from email.parser import BytesParser
from email.policy import default as default_policy

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgnotify.channels.base import EmailMessage
from pgnotify.channels.mime import _BLANKS, build_mime, format_address, header_value
from pgnotify.errors import PermanentError

FROM = "noreply@pgnotify.example"
HEADERS = {
    "from",
    "to",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "auto-submitted",
    "x-auto-response-suppress",
    "mime-version",
    "content-type",
}
HOSTILE = [
    "<script>alert(1)</script>",
    'Bob "the builder", Jr.',
    "x\r\nBcc: victim@evil.example",
    "y\nTo: other@evil.example",
    "nul\x00byte",
    "=?utf-8?b?SGk=?=",
    "Ünïcødé 名前 😀",
    "back\\slash; semi: colon <a@b.c>",
    "  padded  ",
]


def _message(**fields: object) -> EmailMessage:
    base: dict[str, object] = {
        "notification_id": 7,
        "to_address": "maria@example.com",
        "to_name": "Maria",
        "from_name": "Studio Nine",
        "reply_to": "hello@studionine.example",
        "subject": "Confirmed",
        "text": "Hello\n",
        "html": "<p>Hello</p>\n",
        "message_id": "<pgnotify.7@pgnotify.example>",
    }
    base.update(fields)
    return EmailMessage(**base)  # type: ignore[arg-type]


def _parse(data: bytes) -> StdMessage:
    message = BytesParser(policy=default_policy).parsebytes(data)
    assert isinstance(message, StdMessage)
    return message


def _blanks(value: str) -> str:
    """Encoded display names have runs of blanks collapsed (see ``format_address``)."""
    return value if header_value("To", value) is value else _BLANKS.sub(" ", value)


@pytest.mark.parametrize("value", ["a\rb", "a\nb", "a\r\nb", "a\x00b"])
def test_cr_lf_and_nul_in_any_header_value_are_refused(value: str) -> None:
    with pytest.raises(PermanentError, match="CR, LF or NUL"):
        header_value("Subject", value)
    for field in ("subject", "to_name", "from_name"):
        with pytest.raises(PermanentError):
            build_mime(_message(**{field: value}), from_email=FROM)


@pytest.mark.parametrize(
    "address",
    ["bob@example.com\r\nBcc: x@y.z", "a@b.c, d@e.f", "Bob <a@b.c>", "josé@x.es", "@x", ""],
)
def test_invalid_addresses_are_refused(address: str) -> None:
    with pytest.raises(PermanentError, match="invalid email address"):
        format_address("To", "Bob", address)
    with pytest.raises(PermanentError):
        build_mime(_message(to_address=address), from_email=FROM)


def test_plain_values_are_sent_as_is_and_others_as_encoded_words() -> None:
    assert header_value("Subject", "Booking confirmed") == "Booking confirmed"
    assert header_value("Subject", "Reserva está confirmada").startswith("=?utf-8?b?")
    long = header_value("Subject", "é" * 300)
    assert all(len(line) <= 78 for line in long.split("\r\n"))


def test_the_message_has_text_html_and_the_invitation_parts() -> None:
    data = build_mime(
        _message(ics="BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n", ics_method="CANCEL"), from_email=FROM
    )
    parsed = _parse(data)
    assert parsed.get_content_type() == "multipart/mixed"
    types = [part.get_content_type() for part in parsed.walk()]
    assert types == [
        "multipart/mixed",
        "multipart/alternative",
        "text/plain",
        "text/html",
        "text/calendar",
    ]
    calendar = next(p for p in parsed.walk() if p.get_content_type() == "text/calendar")
    assert calendar.get_param("method") == "CANCEL"
    assert calendar.get_content() == "BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n"
    assert parsed["Auto-Submitted"] == "auto-generated"
    assert parsed["Message-ID"] == "<pgnotify.7@pgnotify.example>"
    assert not parsed.defects


def _canonical(body: str) -> str:
    """A text body as a MIME text part carries it: every line break a CRLF."""
    return body.replace("\r\n", "\n").replace("\n", "\r\n")


names = st.one_of(st.sampled_from(HOSTILE), st.text(min_size=1, max_size=60))
bodies = st.one_of(st.sampled_from(HOSTILE), st.text(max_size=400))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    to_name=names,
    from_name=names,
    subject=st.one_of(st.sampled_from(HOSTILE), st.text(min_size=1, max_size=300)),
    text=bodies,
    html=bodies,
    reply_to=st.sampled_from([None, "hello@shop.example", "o'brien+tag@sub.shop.example"]),
)
def test_every_field_comes_back_exactly_and_nothing_else_appears(
    to_name: str, from_name: str, subject: str, text: str, html: str, reply_to: str | None
) -> None:
    message = _message(
        to_name=to_name,
        from_name=from_name,
        subject=subject,
        text=text,
        html=html,
        reply_to=reply_to,
    )
    unsafe = any(c in v for v in (to_name, from_name, subject) for c in "\r\n\x00")
    if unsafe:
        with pytest.raises(PermanentError):
            build_mime(message, from_email=FROM)
        return
    parsed = _parse(build_mime(message, from_email=FROM))

    assert parsed["Subject"] == subject
    (to,) = parsed["To"].addresses
    assert (to.addr_spec, to.display_name) == ("maria@example.com", _blanks(to_name))
    (sender,) = parsed["From"].addresses
    assert (sender.addr_spec, sender.display_name) == (FROM, _blanks(from_name))
    if reply_to:
        assert [a.addr_spec for a in parsed["Reply-To"].addresses] == [reply_to]
    expected = HEADERS if reply_to else HEADERS - {"reply-to"}
    names = parsed.keys()
    assert {name.lower() for name in names} == expected
    assert len(names) == len(expected)  # and none of them twice
    for name in ("Cc", "Bcc"):
        assert parsed[name] is None
    plain = parsed.get_body(("plain",))
    rich = parsed.get_body(("html",))
    assert plain is not None and rich is not None
    # Text travels in canonical form, its line breaks CRLF; nothing else changes.
    assert plain.get_content() == _canonical(text)
    assert rich.get_content() == _canonical(html)
