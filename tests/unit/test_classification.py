"""How provider failures map to what the daemon does next (one pure function each)."""

from __future__ import annotations

import ssl

import pytest
from aiosmtplib import (
    SMTPAuthenticationError,
    SMTPConnectError,
    SMTPDataError,
    SMTPException,
    SMTPNotSupported,
    SMTPReadTimeoutError,
    SMTPRecipientRefused,
    SMTPRecipientsRefused,
    SMTPResponseException,
    SMTPServerDisconnected,
)

from pgnotify.channels.email import classify_smtp_error
from pgnotify.channels.sms import classify_twilio_error, parse_retry_after
from pgnotify.errors import ConfigurationError, PermanentError, TransientError


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (SMTPDataError(451, "4.3.0 try later"), TransientError),
        (SMTPResponseException(421, "4.7.0 closing"), TransientError),
        (SMTPDataError(550, "5.1.1 no such user"), PermanentError),
        (SMTPDataError(554, "5.7.1 rejected"), PermanentError),
        (SMTPAuthenticationError(535, "5.7.8 bad credentials"), ConfigurationError),
        (SMTPResponseException(530, "5.7.0 auth required"), ConfigurationError),
        (SMTPRecipientsRefused([SMTPRecipientRefused(550, "no", "a@b.c")]), PermanentError),
        (SMTPRecipientsRefused([SMTPRecipientRefused(452, "full", "a@b.c")]), TransientError),
        (SMTPServerDisconnected("gone"), TransientError),
        (SMTPConnectError("refused"), TransientError),
        (SMTPReadTimeoutError("slow"), TransientError),
        (TimeoutError(), TransientError),
        (ConnectionResetError("reset"), TransientError),
        (SMTPException("SMTP STARTTLS extension not supported by server."), ConfigurationError),
        (SMTPNotSupported("no AUTH"), ConfigurationError),
    ],
)
def test_smtp_errors_are_classified(exc: BaseException, kind: type[Exception]) -> None:
    assert type(classify_smtp_error(exc)) is kind


def test_smtp_errors_carry_the_servers_code_and_text_on_one_line() -> None:
    error = classify_smtp_error(SMTPDataError(550, "5.1.1 <x@y.z>:\n user unknown"))
    assert str(error) == "SMTP 550 5.1.1 <x@y.z>: user unknown"


def test_a_certificate_that_does_not_verify_is_a_configuration_error() -> None:
    try:
        try:
            raise ssl.SSLCertVerificationError("self-signed certificate")
        except ssl.SSLError as inner:
            raise SMTPConnectError("Error connecting") from inner
    except SMTPConnectError as exc:
        assert isinstance(classify_smtp_error(exc), ConfigurationError)


@pytest.mark.parametrize(
    ("status", "code", "kind", "opt_out"),
    [
        (429, 20429, TransientError, False),
        (429, None, TransientError, False),
        (500, 500, TransientError, False),
        (503, None, TransientError, False),
        (None, None, TransientError, False),
        (400, 21211, PermanentError, False),
        (400, 21614, PermanentError, False),
        (400, 21408, PermanentError, False),
        (400, 21610, PermanentError, True),
        (401, 20003, ConfigurationError, False),
        (401, None, ConfigurationError, False),
        (400, 21602, PermanentError, False),
        (404, 20404, PermanentError, False),
    ],
)
def test_twilio_errors_are_classified(
    status: int | None, code: int | None, kind: type[Exception], opt_out: bool
) -> None:
    error = classify_twilio_error(status, code, "message")
    assert type(error) is kind
    assert getattr(error, "opt_out", False) is opt_out
    assert f"HTTP {status} code {code}" in str(error)


def test_twilio_rate_limits_honour_retry_after() -> None:
    error = classify_twilio_error(429, 20429, "Too many requests", parse_retry_after("17"))
    assert isinstance(error, TransientError) and error.retry_after == 17.0


@pytest.mark.parametrize(
    ("header", "seconds"), [("5", 5.0), (" 2.5 ", 2.5), ("soon", None), (None, None), ("-1", None)]
)
def test_retry_after_parsing(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header) == seconds
