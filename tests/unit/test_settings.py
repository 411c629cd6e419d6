"""Settings from the environment: bad values name their variable; secrets come from files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from pgnotify.errors import SettingsError
from pgnotify.outcome import retry_delay
from pgnotify.settings import Settings, load_settings

_PREFIXES = ("NOTIFICATION_", "SMTP_", "TWILIO_", "DATABASE_", "LISTEN_DATABASE_")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No pgnotify variable, no credentials directory, and no ``.env`` in the cwd."""
    for name in list(os.environ):
        if name.startswith(_PREFIXES) or name in ("CREDENTIALS_DIRECTORY", "FROM_EMAIL"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def load(**overrides: Any) -> Settings:
    return load_settings(_env_file=None, **overrides)


def test_defaults_load_and_are_coherent() -> None:
    settings = load()
    assert settings.NOTIFICATION_RETRY_DELAYS == (60.0, 300.0, 900.0)
    assert settings.NOTIFICATION_LEASE_SECONDS > settings.NOTIFICATION_SEND_TIMEOUT
    assert settings.health_host_port == ("127.0.0.1", 8787)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("NOTIFICATION_WORKERS", "0"),
        ("NOTIFICATION_WORKERS", "three"),
        ("NOTIFICATION_BATCH_SIZE", "-1"),
        ("NOTIFICATION_POLL_INTERVAL", "0"),
        ("NOTIFICATION_RETRY_DELAYS", "60,soon"),
        ("NOTIFICATION_RETRY_DELAYS", "60,-5"),
        ("NOTIFICATION_RETRY_DELAYS", " , "),
        ("NOTIFICATION_HEALTH_ADDR", "8787"),
        ("NOTIFICATION_HEALTH_ADDR", "127.0.0.1:99999"),
        ("NOTIFICATION_LOG_LEVEL", "verbose"),
        ("SMTP_PORT", "70000"),
        ("SMTP_SECURITY", "ssl"),
        ("TWILIO_PHONE_NUMBER", "555-1234"),
    ],
)
def test_a_bad_value_is_a_settings_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load()
    assert variable in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        *[
            (name, bad)
            for name in (
                "NOTIFICATION_POLL_INTERVAL",
                "NOTIFICATION_PURGE_INTERVAL",
                "NOTIFICATION_SEND_TIMEOUT",
                "NOTIFICATION_LEASE_SECONDS",
                "NOTIFICATION_SHUTDOWN_GRACE",
                "NOTIFICATION_PROBE_INTERVAL",
                "NOTIFICATION_DB_TIMEOUT",
            )
            for bad in ("inf", "nan", "-inf", "1e12")
        ],
        ("NOTIFICATION_RETRY_DELAYS", "60,inf"),
        ("NOTIFICATION_RETRY_DELAYS", "nan"),
        ("NOTIFICATION_RETRY_DELAYS", "60,1e12"),
        ("NOTIFICATION_RETRY_DELAYS", ",".join(["1"] * 101)),
        ("NOTIFICATION_RETENTION_DAYS", "10000000"),
        ("NOTIFICATION_WORKERS", "1e9"),
        ("NOTIFICATION_MAX_RETRIES", "inf"),
        ("SMTP_POOL_SIZE", "1000"),
        ("TWILIO_API_URL", "http://api.twilio.com"),
        ("TWILIO_API_URL", "http://10.0.0.8:8080"),
        ("TWILIO_API_URL", "ftp://api.twilio.com"),
        ("TWILIO_API_URL", "api.twilio.com"),
        ("TWILIO_API_URL", "https://"),
        ("FROM_EMAIL", "noreply"),
        ("FROM_EMAIL", "Shop <bookings@example.com>"),
        ("FROM_EMAIL", "bookings@example.com\r\nBcc: x@evil.example"),
        ("FROM_EMAIL", ""),
        ("DATABASE_URL", "postgresql://u:p%zz@db/app"),
        ("DATABASE_URL", "postgresql://u:p@db:port/app"),
        ("DATABASE_URL", "postgresql://u:p@db:70000/app"),
        ("DATABASE_URL", "host=db password='unterminated"),
        ("LISTEN_DATABASE_URL", "postgresql://u:p@db:x/app"),
        ("NOTIFICATION_LINK_BASE_URL", "http://book.example.com"),
        ("NOTIFICATION_LINK_BASE_URL", "ftp://book.example.com"),
        ("NOTIFICATION_LINK_BASE_URL", "https://"),
        ("NOTIFICATION_LINK_BASE_URL", "https://book.example.com/?x=1"),
    ],
)
def test_a_setting_that_cannot_work_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    """Non-finite or absurd numbers, a clear-text token, a bad sender, an unusable URL."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load()
    assert variable in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TWILIO_API_URL", "https://api.eu1.twilio.com"),
        ("TWILIO_API_URL", "http://127.0.0.1:8080"),
        ("TWILIO_API_URL", "http://127.3.4.5"),
        ("TWILIO_API_URL", "http://[::1]:8080"),
        ("TWILIO_API_URL", "http://localhost:8080"),
        ("NOTIFICATION_RETRY_DELAYS", "0,1e5,604800"),
        ("NOTIFICATION_SHUTDOWN_GRACE", "0"),
        ("FROM_EMAIL", "bookings@example.com"),
        ("DATABASE_URL", "postgresql://u:p@db1:5432,db2:6432/app"),
        ("DATABASE_URL", "host=/run/postgresql dbname=app"),
    ],
)
def test_sensible_values_are_accepted(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    load()


@pytest.mark.parametrize("server", ["127.0.0.1", "localhost", "::1"])
def test_smtp_credentials_in_clear_text_only_towards_loopback(
    monkeypatch: pytest.MonkeyPatch, server: str
) -> None:
    """``SMTP_SECURITY=none`` with a login: a local relay only, never one across a network."""
    monkeypatch.setenv("SMTP_SECURITY", "none")
    monkeypatch.setenv("SMTP_USERNAME", "mailer")
    monkeypatch.setenv("SMTP_PASSWORD", "pw")
    monkeypatch.setenv("SMTP_SERVER", server)
    load()
    monkeypatch.setenv("SMTP_SERVER", "smtp.example.com")
    with pytest.raises(SettingsError, match="SMTP_SECURITY=none") as caught:
        load()
    assert "SMTP_SERVER" in str(caught.value)
    monkeypatch.delenv("SMTP_USERNAME")
    monkeypatch.delenv("SMTP_PASSWORD")
    load()  # without a login, a plain relay elsewhere is the operator's choice


def test_a_database_url_error_never_shows_the_password_or_user_info(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """libpq quotes the piece it cannot read, here the password itself: it is not shown."""
    monkeypatch.setenv("DATABASE_URL", "postgresql://daemon-x:hunter2%zz@db/app")
    with pytest.raises(SettingsError, match="DATABASE_URL is not a valid libpq URL") as caught:
        load()
    assert "hunter2" not in str(caught.value)
    assert "daemon-x" not in str(caught.value)


def test_retry_delays_are_read_as_comma_separated_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFICATION_RETRY_DELAYS", "0.5, 2,10")
    settings = load()
    assert settings.NOTIFICATION_RETRY_DELAYS == (0.5, 2.0, 10.0)
    assert retry_delay(1, settings.NOTIFICATION_RETRY_DELAYS) == 0.5
    assert retry_delay(7, settings.NOTIFICATION_RETRY_DELAYS) == 10.0


@pytest.mark.parametrize(("lease", "timeout"), [("30", "30"), ("10", "30")])
def test_the_lease_must_exceed_the_send_timeout(
    monkeypatch: pytest.MonkeyPatch, lease: str, timeout: str
) -> None:
    monkeypatch.setenv("NOTIFICATION_LEASE_SECONDS", lease)
    monkeypatch.setenv("NOTIFICATION_SEND_TIMEOUT", timeout)
    with pytest.raises(SettingsError, match="NOTIFICATION_LEASE_SECONDS must exceed"):
        load()


def test_twilio_needs_a_sender_and_both_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", "AC123")
    with pytest.raises(SettingsError, match="must be set together"):
        load()
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "token")
    with pytest.raises(SettingsError, match="TWILIO_PHONE_NUMBER or TWILIO_MESSAGING"):
        load()
    monkeypatch.setenv("TWILIO_PHONE_NUMBER", "+15550001111")
    assert load().twilio_configured


def test_a_secret_is_read_from_its_file_and_never_shown(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = tmp_path / "smtp-password"
    secret.write_text("s3cret-from-file\n")
    monkeypatch.setenv("SMTP_USERNAME", "mailer")
    monkeypatch.setenv("SMTP_PASSWORD_FILE", str(secret))
    settings = load()
    assert settings.SMTP_PASSWORD is not None
    assert settings.SMTP_PASSWORD.get_secret_value() == "s3cret-from-file"
    assert "s3cret" not in repr(settings)
    assert "s3cret" not in str(settings.model_dump())


def test_secrets_come_from_the_systemd_credentials_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "DATABASE_URL").write_text("postgresql://daemon:pw@db.internal/app\n")
    (tmp_path / "TWILIO_AUTH_TOKEN").write_text("twilio-token")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", "AC123")
    monkeypatch.setenv("TWILIO_PHONE_NUMBER", "+15550001111")
    settings = load()
    assert settings.database_url == "postgresql://daemon:pw@db.internal/app"
    assert settings.TWILIO_AUTH_TOKEN is not None
    assert settings.TWILIO_AUTH_TOKEN.get_secret_value() == "twilio-token"


def test_a_value_in_the_environment_wins_over_a_credential_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "DATABASE_URL").write_text("postgresql://from-file/app")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    monkeypatch.setenv("DATABASE_URL", "postgresql://from-env/app")
    assert load().database_url == "postgresql://from-env/app"


def test_an_unreadable_secret_file_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SMTP_PASSWORD_FILE", str(tmp_path / "missing"))
    with pytest.raises(SettingsError, match="SMTP_PASSWORD_FILE: cannot read"):
        load()


def test_the_listen_url_defaults_to_the_database_url_as_an_asyncpg_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", "host=db.internal dbname=app user=daemon")
    settings = load()
    assert settings.asyncpg_url == "postgresql://daemon@db.internal/app"
    assert settings.listen_database_url == settings.asyncpg_url
    monkeypatch.setenv("LISTEN_DATABASE_URL", "postgresql://daemon@db-primary:5432/app")
    assert load().listen_database_url == "postgresql://daemon@db-primary:5432/app"


def test_links_need_their_secret_and_the_base_loses_its_trailing_slash(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No links by default; a base URL without NOTIFICATION_LINK_SECRET is refused naming
    it; the secret may come from a file like the others and is never shown."""
    assert load().link_signer is None
    monkeypatch.setenv("NOTIFICATION_LINK_BASE_URL", "https://book.example.com/")
    with pytest.raises(SettingsError, match="NOTIFICATION_LINK_SECRET is required"):
        load()
    (tmp_path / "link-secret").write_text("link-s3cret\n")
    monkeypatch.setenv("NOTIFICATION_LINK_SECRET_FILE", str(tmp_path / "link-secret"))
    settings = load()
    assert settings.NOTIFICATION_LINK_BASE_URL == "https://book.example.com"
    assert settings.link_signer is not None
    assert settings.link_signer.secret == b"link-s3cret"
    assert "link-s3cret" not in repr(settings) + repr(settings.link_signer)
    assert "link-s3cret" not in str(settings.model_dump())
    # Plain http only towards this machine (a developer's app), like TWILIO_API_URL.
    monkeypatch.setenv("NOTIFICATION_LINK_BASE_URL", "http://127.0.0.1:8000/")
    assert load().NOTIFICATION_LINK_BASE_URL == "http://127.0.0.1:8000"
