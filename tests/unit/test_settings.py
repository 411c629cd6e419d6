"""Settings from the environment: bad values name their variable; secrets come from files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from pgnotify.errors import SettingsError
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


def test_retry_delays_are_read_as_comma_separated_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFICATION_RETRY_DELAYS", "0.5, 2,10")
    settings = load()
    assert settings.NOTIFICATION_RETRY_DELAYS == (0.5, 2.0, 10.0)
    assert settings.retry_delay(1) == 0.5
    assert settings.retry_delay(7) == 10.0


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
