"""Serialise an ``EmailMessage`` to RFC 5322 bytes, fast, with every header value checked.

Why not ``email.message.EmailMessage``: building a three-part message with it costs about
3 ms, a hundred times the per-notification budget (STYLE rule 11). Here the parts are
encoded (text and HTML quoted-printable, so an operator reads them in the outbox; the
calendar attachment base64) and joined around fixed headers, which costs microseconds.
Safety does not depend on the speed trick: every header value, without exception, goes
through ``header_value`` (CR, LF and NUL are a ``PermanentError``; anything not plain ASCII
is sent as RFC 2047 encoded words) and every address through ``format_address``. A property
test parses the output with the stdlib parser and checks every field comes back as given.
"""

from __future__ import annotations

import re
from base64 import b64encode, encodebytes
from binascii import b2a_qp
from email.utils import formataddr, formatdate

from pgnotify.channels.base import EmailMessage
from pgnotify.errors import PermanentError

# A value may be sent as is when it is printable ASCII words separated by single spaces:
# anything else (leading/trailing/double spaces, tabs, controls, non-ASCII, something that
# looks like an encoded word) is encoded, so the receiver decodes exactly what we meant.
_PLAIN = re.compile(r"[!-~]+(?: [!-~]+)*")
# Unicode whitespace and C0/C1 controls (CR, LF and NUL are refused outright): parsers
# show a run of them as one space in a display name, or cut the name at them, so a run
# of them is sent as one space.
_BLANKS = re.compile(r"[\s\x01-\x08\x0e-\x1f\x7f-\x9f]+")
_FORBIDDEN = re.compile(r"[\r\n\x00]")
# The one rule for an email address, shared with SQL (`pgnotify.is_valid_email` in
# sql/001_baseline.sql applies the same pattern and limits, spelled without bounded repeats
# for Postgres' regex engine; tests/sql/test_email_rule.py feeds both one corpus and random
# text): an ASCII dot-atom local part of at most 64 characters, `@`, and a
# domain of letter-digit-hyphen labels of at most 63 characters (no leading or trailing
# hyphen; international domains in their xn-- form), at most 254 characters in all. A
# domain without a dot (`noreply@localhost`) is accepted, as SMTP accepts it. No quoted
# local parts, no comments, no UTF-8: we do not speak SMTPUTF8.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_ADDRESS = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*@{_LABEL}(?:\.{_LABEL})*")
MAX_ADDRESS = 254
MAX_LOCAL_PART = 64
_MESSAGE_ID = re.compile(r"<[!-;=?-~]+@[!-;=?-~]+>")
_MAX_PLAIN = 900  # RFC 5322 caps a line at 998 octets; longer values are folded words
_MAX_NAME = 200  # characters; as one encoded word it stays well under 998 octets
_WORD_BYTES = 42  # 56 base64 characters: each encoded word stays within 75 characters
ICS_METHODS = frozenset({"REQUEST", "CANCEL", "PUBLISH"})


def header_value(field: str, value: str) -> str:
    """Validate one header value and return it ready to follow ``field: ``.

    The single gate for header safety: a CR, LF or NUL (header or recipient injection)
    raises ``PermanentError`` naming the field; non-ASCII or irregular whitespace becomes
    RFC 2047 encoded words (base64, UTF-8), folded so no line exceeds 78 octets.
    """
    if _FORBIDDEN.search(value):
        raise PermanentError(f"header {field} contains CR, LF or NUL: {value[:60]!r}")
    if len(value) <= _MAX_PLAIN and "=?" not in value and _PLAIN.fullmatch(value):
        return value
    return encoded_words(value)


def encoded_words(value: str) -> str:
    """RFC 2047 ``=?utf-8?b?...?=`` words, split between characters, joined by folding."""
    data = value.encode("utf-8")
    words = []
    start = 0
    while start < len(data):
        end = min(start + _WORD_BYTES, len(data))
        while end < len(data) and (data[end] & 0xC0) == 0x80:
            end -= 1  # never split a UTF-8 sequence across two words
        words.append(f"=?utf-8?b?{b64encode(data[start:end]).decode('ascii')}?=")
        start = end
    return "\r\n ".join(words) if words else '""'


def format_address(field: str, name: str | None, address: str) -> str:
    """``Display Name <addr@example.com>`` with the name validated like any header value.

    Addresses must be plain ASCII dot-atoms (we do not speak SMTPUTF8); anything else is a
    ``PermanentError`` naming the field. Plain names go through ``email.utils.formataddr``
    (which quotes specials); in others, runs of whitespace and controls become one space,
    as every reader shows them, and a name still not plain becomes one encoded word.
    """
    if not is_valid_address(address):
        raise PermanentError(f"header {field}: invalid email address {address[:80]!r}")
    if not name:
        return address
    if header_value(field, name) is not name:
        # Readers collapse runs of blanks inside a display name; doing it here makes what
        # we send exactly what the recipient's parser returns.
        name = _BLANKS.sub(" ", name)
    if header_value(field, name) is name:
        return formataddr((name, address))
    # One encoded word, never several: parsers put a space between adjacent encoded
    # words inside a display name, which would change the name.
    if len(name) > _MAX_NAME:
        raise PermanentError(f"header {field}: display name longer than {_MAX_NAME}")
    return f"=?utf-8?b?{b64encode(name.encode('utf-8')).decode('ascii')}?= <{address}>"


def is_valid_address(address: str) -> bool:
    """True for an address we send to: the rule SQL's ``pgnotify.is_valid_email`` applies.

    ASCII dot-atom ``@`` letter-digit-hyphen labels, local part at most 64 characters, the
    whole at most 254 (see ``_ADDRESS``). The value is checked as given: no trimming.
    """
    return (
        len(address) <= MAX_ADDRESS
        and _ADDRESS.fullmatch(address) is not None
        and address.index("@") <= MAX_LOCAL_PART
    )


def _base64_body(content: str) -> bytes:
    return encodebytes(content.encode("utf-8")).replace(b"\n", b"\r\n")


def _quoted_printable_body(content: str) -> bytes:
    """Quoted-printable: ASCII stays readable, lines at most 76 octets, CRLF line ends.

    Each line is encoded as binary (``istext=False``), so a CR inside a line can only leave
    as ``=0D``: every CRLF of the output is a line end chosen here. The CRLF after the last
    line belongs to the boundary that follows, so a trailing line break of ``content``
    survives as an empty last line. A reader gets the text back with CRLF line ends (the
    canonical form of MIME text).
    """
    lines = content.replace("\r\n", "\n").split("\n")
    return (
        b"\r\n".join(
            b2a_qp(line.encode("utf-8"), istext=False).replace(b"=\n", b"=\r\n") for line in lines
        )
        + b"\r\n"
    )


def _part(content_type: bytes, body: str, extra: bytes = b"") -> bytes:
    if content_type.startswith(b"text/calendar"):
        encoding, encoded = b"base64", _base64_body(body)
    else:
        encoding, encoded = b"quoted-printable", _quoted_printable_body(body)
    head = b"Content-Type: %b\r\nContent-Transfer-Encoding: %b\r\n%b\r\n"
    return head % (content_type, encoding, extra) + encoded


def _multipart(boundary: bytes, *parts: bytes) -> bytes:
    """The body of a multipart entity: each part after a delimiter line, then the close."""
    delimiter = b"--" + boundary
    opening = delimiter + b"\r\n"
    return opening + opening.join(parts) + delimiter + b"--\r\n"


def build_mime(message: EmailMessage, *, from_email: str, date: str | None = None) -> bytes:
    """Serialise ``message`` (text + HTML, plus its ICS when set) to CRLF bytes.

    ``date`` is an RFC 5322 date (now when omitted). Raises ``PermanentError`` for any
    unsafe header value, invalid address or Message-ID, or unknown ICS method.
    """
    if not _MESSAGE_ID.fullmatch(message.message_id):
        raise PermanentError(f"invalid Message-ID {message.message_id[:80]!r}")
    headers = [
        "From: " + format_address("From", message.from_name, from_email),
        "To: " + format_address("To", message.to_name, message.to_address),
    ]
    if message.reply_to:
        headers.append("Reply-To: " + format_address("Reply-To", None, message.reply_to))
    headers += [
        "Subject: " + header_value("Subject", message.subject),
        "Date: " + (date or formatdate(usegmt=True)),
        "Message-ID: " + message.message_id,
        "Auto-Submitted: auto-generated",
        # Asks Exchange/Outlook not to answer with out-of-office replies.
        "X-Auto-Response-Suppress: All",
        "MIME-Version: 1.0",
    ]
    nid = message.notification_id
    alt = f"=_pgnotify_{nid}_alt".encode("ascii")
    content_type = b'multipart/alternative; boundary="' + alt + b'"'
    body = _multipart(
        alt,
        _part(b"text/plain; charset=utf-8", message.text),
        _part(b"text/html; charset=utf-8", message.html),
    )
    if message.ics is not None:
        method = message.ics_method or "REQUEST"
        if method not in ICS_METHODS:
            raise PermanentError(f"invalid ICS method {method[:20]!r}")
        mixed = f"=_pgnotify_{nid}_mix".encode("ascii")
        calendar = _part(
            b'text/calendar; charset=utf-8; method=%b; name="invite.ics"' % method.encode("ascii"),
            message.ics,
            b'Content-Disposition: attachment; filename="invite.ics"\r\n',
        )
        alternative = b"Content-Type: " + content_type + b"\r\n\r\n" + body
        content_type = b'multipart/mixed; boundary="' + mixed + b'"'
        body = _multipart(mixed, alternative, calendar)
    head = "\r\n".join(headers).encode("ascii")
    return head + b"\r\nContent-Type: " + content_type + b"\r\n\r\n" + body
