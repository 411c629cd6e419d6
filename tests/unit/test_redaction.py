"""``text.redact``: the one function between a secret and any message pgnotify shows."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import asyncpg
import pytest

from pgnotify.db import as_url, connect_sync, describe_dsn, dsn_secrets
from pgnotify.errors import DatabaseUnavailable, PermanentError
from pgnotify.settings import load_settings
from pgnotify.text import describe_error, redact, remember_secrets

DB_PASSWORD = "db pa$$/wörd@1"  # needs percent-encoding in a URL
SMTP_PASSWORD = "smtp-Secret-2"
TWILIO_TOKEN = "twilio-token-3"
ALL = (DB_PASSWORD, SMTP_PASSWORD, TWILIO_TOKEN)


def forms(secret: str) -> set[str]:
    return {secret, quote(secret, safe=""), quote(secret)}


def assert_clean(text: str) -> None:
    found = sorted(f for s in ALL for f in forms(s) if f in text)
    assert found == [], f"secret in {text!r}: {found}"


@pytest.fixture
def loaded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Settings loaded with the three secrets (and nothing else from the environment)."""
    for name in list(os.environ):
        if name.startswith(("NOTIFICATION_", "SMTP_", "TWILIO_", "DATABASE_", "LISTEN_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    load_settings(
        _env_file=None,
        DATABASE_URL=f"postgresql://daemon:{quote(DB_PASSWORD, safe='')}@127.0.0.1:1/app",
        SMTP_USERNAME="mailer",
        SMTP_PASSWORD=SMTP_PASSWORD,
        TWILIO_ACCOUNT_SID="AC123",
        TWILIO_AUTH_TOKEN=TWILIO_TOKEN,
        TWILIO_PHONE_NUMBER="+15550001111",
    )
    yield
    remember_secrets(())


def test_loaded_secrets_are_hidden_in_every_form(loaded: None) -> None:
    for secret in ALL:
        for form in forms(secret):
            assert_clean(redact(f"before {form} after"))
    assert redact(f"x {SMTP_PASSWORD} y") == "x *** y"


def test_passwords_in_urls_and_keyword_strings_are_hidden_even_unknown_ones() -> None:
    remember_secrets(())
    assert redact("postgresql://u:unknown@h/d failed") == "postgresql://u:***@h/d failed"
    assert redact("host=h password=unknown dbname=d") == "host=h password=*** dbname=d"
    assert redact("password = 'un known' x") == "password = *** x"
    assert redact("no secret here") == "no secret here"


def test_dsn_secrets_reads_the_password_of_strings_libpq_refuses() -> None:
    assert "p%zz" in dsn_secrets("postgresql://u:p%zz@h/d")
    assert "it's" in dsn_secrets(r"host=h password='it\'s' dbname=d")
    assert "q" in dsn_secrets("postgresql://h/d?sslmode=require&password=q")


async def test_a_logged_database_error_never_shows_a_secret(loaded: None, clean_db: str) -> None:
    """A real asyncpg error whose text carries each secret, described as the daemon logs it."""
    conn = await asyncpg.connect(as_url(clean_db))
    try:
        for secret in ALL:
            with pytest.raises(asyncpg.PostgresError) as caught:
                await conn.execute(
                    f"do $x$ begin raise exception 'failed: % / %', '{secret}',"
                    f" '{quote(secret, safe='')}'; end $x$"
                )
            assert secret in str(caught.value)  # the error really carried it
            described = describe_error(caught.value)
            assert described.startswith("RaiseError: failed: ***")
            assert_clean(described)
    finally:
        await conn.close()


def test_a_connect_failure_never_shows_the_password(loaded: None) -> None:
    url = f"postgresql://daemon:{quote(DB_PASSWORD, safe='')}@127.0.0.1:1/{quote(DB_PASSWORD)}"
    with pytest.raises(DatabaseUnavailable) as caught:
        connect_sync(url, connect_timeout=2)
    assert "cannot connect to daemon@127.0.0.1:1/" in str(caught.value)
    assert_clean(str(caught.value))
    assert_clean(describe_dsn(url))


def test_a_delivery_error_is_one_line() -> None:
    error = PermanentError("550 no\r\n such\x00 user")
    assert str(error) == "550 no such user"
