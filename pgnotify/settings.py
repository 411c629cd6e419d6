"""Settings from the environment (and ``.env``), named as in CONTRACT.md §4.

Secrets can also come from files, for systemd's ``LoadCredential=``: ``SMTP_PASSWORD_FILE``,
``TWILIO_AUTH_TOKEN_FILE``, ``DATABASE_URL_FILE``, ``LISTEN_DATABASE_URL_FILE`` and
``NOTIFICATION_LINK_SECRET_FILE``, or a file of the setting's name in
``$CREDENTIALS_DIRECTORY``. Secrets are ``SecretStr`` so they never reach a log line, and
they are handed to ``text.redact`` as they load, so no error message shows them either.

A setting that cannot work is refused here, so every command stops at start (exit 2)
naming it: every number is finite and bounded, URLs parse, a secret never travels in
clear text to another host, the sender address is one we can send from.
"""

from __future__ import annotations

import ipaddress
import math
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import SplitResult, urlsplit

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from pgnotify.channels.mime import is_valid_address
from pgnotify.errors import SettingsError
from pgnotify.links import LinkSigner
from pgnotify.segments import is_e164
from pgnotify.text import one_line, redact, remember_secrets

_SECRET_NAMES = (
    "DATABASE_URL",
    "LISTEN_DATABASE_URL",
    "SMTP_PASSWORD",
    "TWILIO_AUTH_TOKEN",
    "NOTIFICATION_LINK_SECRET",
)
_LOOPBACK = "a loopback address (127.0.0.0/8, ::1, localhost)"
# Upper bounds of the durations (seconds): far above any sensible value, far below what
# overflows a timestamp or makes a timer meaningless. Every float is also finite.
_HOUR, _DAY = 3600.0, 86400.0
_MAX_RETRY_DELAY = 7 * _DAY
_MAX_RETRY_DELAYS = 100


def is_loopback(host: str) -> bool:
    """``localhost`` or a literal address in 127.0.0.0/8 or ``::1``; no name is resolved."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _https_or_loopback(url: SplitResult) -> bool:
    """A URL with a host, over https (or plain http towards a loopback address)."""
    host = url.hostname or ""
    return bool(host) and (url.scheme == "https" or (url.scheme == "http" and is_loopback(host)))


def _secret_values(data: dict[str, Any]) -> list[str]:
    """Every secret in the raw settings, with the passwords inside the database URLs."""
    from pgnotify.db import dsn_secrets

    values: list[str] = []
    for name in _SECRET_NAMES:
        value = data.get(name)
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, str) and value:
            values.extend(dsn_secrets(value) if name.endswith("DATABASE_URL") else [value])
    return values


class Settings(BaseSettings):
    """Every knob of pgnotify; validation errors name the variable and why."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=True
    )

    DATABASE_URL: SecretStr = SecretStr("postgresql://localhost/pgnotify")
    # LISTEN needs a session: behind PgBouncer (transaction mode), point this at the server.
    LISTEN_DATABASE_URL: SecretStr | None = None
    # Behind PgBouncer in transaction mode: no server-side prepared statement cache.
    DATABASE_PGBOUNCER: bool = False

    SMTP_SERVER: str | None = None
    SMTP_PORT: int | None = Field(default=None, ge=1, le=65535)
    SMTP_USERNAME: str | None = None
    SMTP_PASSWORD: SecretStr | None = None
    SMTP_SECURITY: Literal["starttls", "tls", "none"] = "starttls"
    SMTP_POOL_SIZE: int = Field(default=4, ge=1, le=64)
    FROM_EMAIL: str = "noreply@localhost"

    TWILIO_ACCOUNT_SID: str | None = None
    TWILIO_AUTH_TOKEN: SecretStr | None = None
    TWILIO_PHONE_NUMBER: str | None = None
    TWILIO_MESSAGING_SERVICE_SID: str | None = None
    TWILIO_API_URL: str = "https://api.twilio.com"

    NOTIFICATION_WORKERS: int = Field(default=3, ge=1, le=256)
    NOTIFICATION_BATCH_SIZE: int = Field(default=10, ge=1, le=10_000)
    NOTIFICATION_POLL_INTERVAL: float = Field(default=10.0, gt=0, le=_HOUR, allow_inf_nan=False)
    # Seconds between fetches of Twilio's Messages list for replies (pgnotify/inbound.py);
    # 0, the default, leaves replies to the application's webhook.
    NOTIFICATION_INBOUND_POLL: float = Field(default=0.0, ge=0, le=_DAY, allow_inf_nan=False)
    NOTIFICATION_MAX_RETRIES: int = Field(default=3, ge=0, le=100)
    NOTIFICATION_RETRY_DELAYS: Annotated[tuple[float, ...], NoDecode] = (60.0, 300.0, 900.0)
    NOTIFICATION_RETENTION_DAYS: int = Field(default=90, ge=1, le=36_500)
    # Seconds between retention purges (the first runs within a minute of the start).
    NOTIFICATION_PURGE_INTERVAL: float = Field(
        default=3600.0, gt=0, le=7 * _DAY, allow_inf_nan=False
    )
    NOTIFICATION_SEND_TIMEOUT: float = Field(default=30.0, gt=0, le=_HOUR, allow_inf_nan=False)
    NOTIFICATION_LEASE_SECONDS: float = Field(default=120.0, gt=0, le=_DAY, allow_inf_nan=False)
    NOTIFICATION_SHUTDOWN_GRACE: float = Field(default=20.0, ge=0, le=_HOUR, allow_inf_nan=False)
    NOTIFICATION_OUTBOX_DIR: Path = Path("./outbox")
    NOTIFICATION_HEALTH_ADDR: str = "127.0.0.1:8787"
    NOTIFICATION_LOG_FORMAT: Literal["json", "console"] | None = None
    NOTIFICATION_LOG_LEVEL: Literal["debug", "info", "warning", "error"] = "info"
    NOTIFICATION_TEMPLATES_DIR: Path | None = None
    # The budget of one render of a shop's own template (render_pool.py): seconds, and the
    # worker process's address space. A worker needs about 50 MB before it renders at all.
    NOTIFICATION_RENDER_TIMEOUT: float = Field(default=2.0, gt=0, le=60, allow_inf_nan=False)
    NOTIFICATION_RENDER_MEMORY_MB: int = Field(default=256, ge=64, le=65_536)
    NOTIFICATION_PROBE_INTERVAL: float = Field(default=5.0, gt=0, le=_HOUR, allow_inf_nan=False)
    NOTIFICATION_DB_TIMEOUT: float = Field(default=15.0, gt=0, le=_HOUR, allow_inf_nan=False)
    # Signed links to the application's booking pages (pgnotify/links.py); unset: no links.
    NOTIFICATION_LINK_BASE_URL: str | None = None
    NOTIFICATION_LINK_SECRET: SecretStr | None = None

    @model_validator(mode="before")
    @classmethod
    def _secrets_from_files(cls, data: Any) -> Any:
        """Fill secrets from ``NAME_FILE`` or ``$CREDENTIALS_DIRECTORY/NAME`` when unset."""
        if not isinstance(data, dict):
            return data
        creds = os.environ.get("CREDENTIALS_DIRECTORY")
        for name in _SECRET_NAMES:
            if data.get(name):
                continue
            path = data.get(f"{name}_FILE") or os.environ.get(f"{name}_FILE")
            if not path and creds and (Path(creds) / name).is_file():
                path = str(Path(creds) / name)
            if path:
                try:
                    data[name] = Path(path).read_text(encoding="utf-8").strip()
                except OSError as exc:
                    raise ValueError(f"{name}_FILE: cannot read {path}: {exc.strerror}") from exc
        # Before any value is validated: an error about a bad setting is redacted too.
        remember_secrets(_secret_values(data))
        return data

    @field_validator("NOTIFICATION_RETRY_DELAYS", mode="before")
    @classmethod
    def _parse_delays(cls, value: Any) -> Any:
        if isinstance(value, str):
            parts = [p.strip() for p in value.split(",") if p.strip()]
            if not parts:
                raise ValueError("expected comma-separated seconds, e.g. 60,300,900")
            try:
                return tuple(float(p) for p in parts)
            except ValueError:
                raise ValueError(f"expected comma-separated seconds, got {value!r}") from None
        return value

    @field_validator("NOTIFICATION_RETRY_DELAYS")
    @classmethod
    def _bounded_delays(cls, delays: tuple[float, ...]) -> tuple[float, ...]:
        if not 1 <= len(delays) <= _MAX_RETRY_DELAYS:
            raise ValueError(f"expected 1 to {_MAX_RETRY_DELAYS} delays, got {len(delays)}")
        if any(d < 0 for d in delays):
            raise ValueError("delays must not be negative")
        if not all(math.isfinite(d) and d <= _MAX_RETRY_DELAY for d in delays):
            raise ValueError(
                f"each delay must be a finite number of seconds <= {_MAX_RETRY_DELAY:g}"
            )
        return delays

    @field_validator("DATABASE_URL", "LISTEN_DATABASE_URL")
    @classmethod
    def _usable_dsn(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        from pgnotify.db import dsn_problem

        if value is not None and (problem := dsn_problem(value.get_secret_value())):
            raise ValueError(f"{info.field_name} {problem}")
        return value

    @field_validator("TWILIO_API_URL")
    @classmethod
    def _https(cls, value: str) -> str:
        # The auth token travels in every request's Authorization header.
        if not _https_or_loopback(urlsplit(value)):
            raise ValueError(
                "must be an https:// URL with a host (plain http:// only towards "
                f"{_LOOPBACK}): the auth token is sent with every request"
            )
        return value

    @field_validator("NOTIFICATION_LINK_BASE_URL")
    @classmethod
    def _link_base(cls, value: str | None) -> str | None:
        # The token in every link is a bearer credential for the booking's page.
        if value is None or not value.strip():
            return None
        parts = urlsplit(value.strip())
        if parts.query or parts.fragment or not _https_or_loopback(parts):
            raise ValueError(
                "must be an https:// URL with a host and no query or fragment (plain http:// "
                f"only towards {_LOOPBACK}): each link carries a token to the booking"
            )
        return value.strip().rstrip("/")

    @field_validator("FROM_EMAIL")
    @classmethod
    def _sender(cls, value: str) -> str:
        if not is_valid_address(value):
            raise ValueError(
                f"must be a plain email address like bookings@example.com, got {value!r}"
            )
        return value

    @field_validator("TWILIO_PHONE_NUMBER")
    @classmethod
    def _e164(cls, value: str | None) -> str | None:
        if value is not None and not is_e164(value):
            raise ValueError(f"must be an E.164 number like +15551234567, got {value!r}")
        return value

    @field_validator("NOTIFICATION_HEALTH_ADDR")
    @classmethod
    def _health_addr(cls, value: str) -> str:
        if value:
            host, sep, port = value.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
                raise ValueError(f"expected host:port (or empty to disable), got {value!r}")
        return value

    @model_validator(mode="after")
    def _coherent(self) -> Settings:
        if self.NOTIFICATION_LEASE_SECONDS <= self.NOTIFICATION_SEND_TIMEOUT:
            raise ValueError(
                "NOTIFICATION_LEASE_SECONDS must exceed NOTIFICATION_SEND_TIMEOUT "
                f"({self.NOTIFICATION_LEASE_SECONDS} <= {self.NOTIFICATION_SEND_TIMEOUT})"
            )
        if self.twilio_configured and not (
            self.TWILIO_PHONE_NUMBER or self.TWILIO_MESSAGING_SERVICE_SID
        ):
            raise ValueError(
                "TWILIO_PHONE_NUMBER or TWILIO_MESSAGING_SERVICE_SID is required with Twilio"
            )
        if bool(self.TWILIO_ACCOUNT_SID) != bool(self.TWILIO_AUTH_TOKEN):
            raise ValueError("TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN must be set together")
        if self.NOTIFICATION_LINK_BASE_URL and not (
            self.NOTIFICATION_LINK_SECRET and self.NOTIFICATION_LINK_SECRET.get_secret_value()
        ):
            raise ValueError(
                "NOTIFICATION_LINK_SECRET is required when NOTIFICATION_LINK_BASE_URL is set"
            )
        if self.SMTP_USERNAME and not self.SMTP_PASSWORD:
            raise ValueError("SMTP_PASSWORD is required when SMTP_USERNAME is set")
        if (
            self.SMTP_SECURITY == "none"
            and (self.SMTP_USERNAME or self.SMTP_PASSWORD)
            and self.SMTP_SERVER
            and not is_loopback(self.SMTP_SERVER)
        ):
            raise ValueError(
                "SMTP_SECURITY=none would send SMTP_USERNAME and SMTP_PASSWORD in clear text:"
                f" allowed only when SMTP_SERVER is {_LOOPBACK}; use starttls or tls"
            )
        return self

    @property
    def database_url(self) -> str:
        return self.DATABASE_URL.get_secret_value()

    @property
    def asyncpg_url(self) -> str:
        from pgnotify.db import as_url

        return as_url(self.database_url)

    @property
    def listen_database_url(self) -> str:
        from pgnotify.db import as_url

        if self.LISTEN_DATABASE_URL is not None:
            return as_url(self.LISTEN_DATABASE_URL.get_secret_value())
        return self.asyncpg_url

    @property
    def link_signer(self) -> LinkSigner | None:
        """What signs the links in messages, or None when links are not configured."""
        if not (self.NOTIFICATION_LINK_BASE_URL and self.NOTIFICATION_LINK_SECRET):
            return None
        secret = self.NOTIFICATION_LINK_SECRET.get_secret_value().encode("utf-8")
        return LinkSigner(self.NOTIFICATION_LINK_BASE_URL, secret)

    @property
    def smtp_configured(self) -> bool:
        return bool(self.SMTP_SERVER)

    @property
    def smtp_port(self) -> int:
        if self.SMTP_PORT is not None:
            return self.SMTP_PORT
        return {"tls": 465, "starttls": 587, "none": 25}[self.SMTP_SECURITY]

    @property
    def twilio_configured(self) -> bool:
        return bool(self.TWILIO_ACCOUNT_SID and self.TWILIO_AUTH_TOKEN)

    @property
    def health_host_port(self) -> tuple[str, int] | None:
        if not self.NOTIFICATION_HEALTH_ADDR:
            return None
        host, _, port = self.NOTIFICATION_HEALTH_ADDR.rpartition(":")
        return host.strip("[]"), int(port)

    @property
    def log_format(self) -> str:
        if self.NOTIFICATION_LOG_FORMAT:
            return self.NOTIFICATION_LOG_FORMAT
        return "console" if sys.stderr.isatty() else "json"


def load_settings(**overrides: Any) -> Settings:
    """Load settings, turning pydantic's report into one ``SettingsError`` per bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "settings"
            msg = err["msg"].removeprefix("Value error, ")
            # A message of a check across settings, or one that starts with the variable's
            # name, already says where.
            lines.append(msg if not err["loc"] or msg.startswith(where) else f"{where}: {msg}")
        raise SettingsError(redact(one_line("invalid settings: " + "; ".join(lines)))) from None
