"""SMS through Twilio's REST API with the official client, used asynchronously.

Three twilio-python behaviours shape this file:

* The async HTTP client opens an ``aiohttp.ClientSession`` when constructed, so it is
  created lazily inside the running loop and closed in ``aclose``.
* ``Client(environment=...)`` falls back to ``os.environ`` when the mapping is empty
  (``environment or os.environ``), and reads ``TWILIO_REGION``/``TWILIO_EDGE`` from it,
  which rewrite the host name. We pass a non-empty mapping holding only our credentials
  and clear ``region``/``edge`` afterwards, so stray variables cannot redirect traffic.
* The client has no timeout of its own worth trusting and retries (``max_retries``)
  would re-POST and duplicate SMS; every call is wrapped in ``asyncio.timeout`` and
  retries are left to the daemon. ``TwilioRestException`` carries status and code but
  not the headers, so our HTTP client keeps the last response's ``Retry-After`` in a
  context variable that the error path reads.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import aiohttp
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from pgnotify.channels.base import Message, Receipt, SmsMessage
from pgnotify.errors import (
    ConfigurationError,
    DeliveryError,
    PermanentError,
    TransientError,
)
from pgnotify.segments import is_e164
from pgnotify.settings import Settings

TWILIO_API_URL = "https://api.twilio.com"
PERMANENT_CODES = frozenset({21211, 21614, 21408})
"""Invalid 'To' number, not a mobile number, region not enabled: retrying cannot help."""
OPT_OUT_CODES = frozenset({21610})
"""The recipient replied STOP: permanent, and no further SMS should be queued."""
AUTH_CODES = frozenset({20003})
INBOUND_PAGE_SIZE = 100
"""Messages per page of the Messages list when polling for replies."""


@dataclass(frozen=True)
class InboundSms:
    """One reply as the Messages list shows it."""

    sid: str
    from_address: str
    to_address: str | None
    body: str
    sent_at: datetime | None


def inbound_only(
    records: Iterable[Any], *, number: str | None, service_sid: str | None
) -> list[InboundSms]:
    """The replies among Messages list records, oldest first: inbound, with a sender, and
    to our messaging service when there is one, else to our number."""
    kept = []
    for r in records:
        if not str(getattr(r, "direction", "") or "").startswith("inbound"):
            continue
        if not getattr(r, "sid", None) or not getattr(r, "from_", None):
            continue
        if service_sid and getattr(r, "messaging_service_sid", None) != service_sid:
            continue
        if not service_sid and number and getattr(r, "to", None) != number:
            continue
        sent = getattr(r, "date_sent", None)
        kept.append(
            InboundSms(
                sid=str(r.sid),
                from_address=str(r.from_),
                to_address=str(r.to) if getattr(r, "to", None) else None,
                body=str(getattr(r, "body", "") or ""),
                sent_at=sent if isinstance(sent, datetime) else None,
            )
        )
    epoch = datetime.min.replace(tzinfo=UTC)
    return sorted(kept, key=lambda m: (m.sent_at or epoch, m.sid))


_retry_after: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "pgnotify_twilio_retry_after", default=None
)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds form); ``None`` if absent/odd."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def classify_twilio_error(
    status: int | None, code: int | None, message: str, retry_after: float | None = None
) -> DeliveryError:
    """Map a Twilio error to what happens next; the text keeps HTTP status and code.

    429/20429 and 5xx are transient (429 honours ``Retry-After``); 21211/21614/21408 are
    permanent; 21610 is permanent with ``opt_out``; 401/20003 are configuration errors;
    any other 4xx is permanent.
    """
    text = f"Twilio HTTP {status} code {code}: {message}"
    if status == 429 or code == 20429:
        return TransientError(text, retry_after=retry_after)
    if code in OPT_OUT_CODES:
        return PermanentError(text, opt_out=True)
    if code in PERMANENT_CODES:
        return PermanentError(text)
    if status == 401 or code in AUTH_CODES:
        return ConfigurationError(text)
    if status is not None and 400 <= status < 500:
        return PermanentError(text)
    return TransientError(text, retry_after=retry_after)


def form_body(data: Any) -> bytes | None:
    """``data`` (twilio's parameters) as the urlencoded body aiohttp's ``FormData`` would
    send, or ``None`` when it is not a mapping of strings (left to aiohttp then).

    Handing aiohttp bytes skips its payload registry's failed lookup of a dict (a raised
    ``LookupError``) and the ``FormData`` object built per request: an eighth of the
    daemon's CPU per SMS in a py-spy profile before this.
    """
    if not isinstance(data, dict) or not data:
        return None
    for value in data.values():
        if isinstance(value, list):
            if not all(isinstance(v, str) for v in value):
                return None
        elif not isinstance(value, str):
            return None
    return urlencode(list(data.items()), doseq=True).encode()


class RewritingHttpClient(AsyncTwilioHttpClient):  # type: ignore[misc]
    """twilio's aiohttp client pointed at ``base_url``, never retrying by itself, sending a
    pre-encoded form body, and logging requests only when its logger would print them."""

    def __init__(self, base_url: str) -> None:
        super().__init__(pool_connections=True, max_retries=None)
        self.base_url = base_url.rstrip("/")

    async def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Response:
        """Rewrite the API host, send, and remember ``Retry-After`` for the error path."""
        if self.base_url != TWILIO_API_URL and url.startswith(TWILIO_API_URL):
            url = self.base_url + url[len(TWILIO_API_URL) :]
        body = form_body(kwargs.get("data"))
        if body is not None:
            kwargs["data"] = body
            kwargs["headers"] = {
                "Content-Type": "application/x-www-form-urlencoded",
                **(kwargs.get("headers") or {}),
            }
        _retry_after.set(None)
        response: Response = await super().request(method, url, *args, **kwargs)
        _retry_after.set(response.headers.get("Retry-After") if response.headers else None)
        return response

    # twilio formats every header into a log record per request even when nothing prints.
    def log_request(self, kwargs: dict[str, Any]) -> None:
        if self.logger.isEnabledFor(logging.INFO):
            super().log_request(kwargs)

    def log_response(self, status_code: int, response: Any) -> None:
        if self.logger.isEnabledFor(logging.INFO):
            super().log_response(status_code, response)


class TwilioChannel:
    """Sends ``SmsMessage`` through Twilio; the receipt is the message SID."""

    name = "sms"
    mode = "twilio"

    def __init__(self, settings: Settings) -> None:
        if not settings.twilio_configured or settings.TWILIO_AUTH_TOKEN is None:
            raise ValueError("TwilioChannel needs TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN")
        self.account_sid = str(settings.TWILIO_ACCOUNT_SID)
        self._token = settings.TWILIO_AUTH_TOKEN.get_secret_value()
        self.from_number = settings.TWILIO_PHONE_NUMBER
        self.messaging_service_sid = settings.TWILIO_MESSAGING_SERVICE_SID
        self.api_url = settings.TWILIO_API_URL
        self.timeout = settings.NOTIFICATION_SEND_TIMEOUT
        self._http: RewritingHttpClient | None = None
        self._client: Client | None = None

    def _twilio(self) -> Client:
        # Created on first use, inside the running loop: the aiohttp session binds to it.
        if self._client is None:
            self._http = RewritingHttpClient(self.api_url)
            self._client = Client(
                self.account_sid,
                self._token,
                http_client=self._http,
                environment={
                    "TWILIO_ACCOUNT_SID": self.account_sid,
                    "TWILIO_AUTH_TOKEN": self._token,
                },
            )
            self._client.region = None
            self._client.edge = None
        return self._client

    async def send(self, message: Message) -> Receipt:
        """Create one Message resource within the send timeout, or raise a classified error."""
        if not isinstance(message, SmsMessage):
            raise PermanentError(f"Twilio channel cannot send {type(message).__name__}")
        if not is_e164(message.to_number):
            raise PermanentError(f"recipient {message.to_number!r} is not an E.164 number")
        params: dict[str, Any] = {"to": message.to_number, "body": message.body}
        if self.messaging_service_sid:
            params["messaging_service_sid"] = self.messaging_service_sid
        else:
            params["from_"] = self.from_number
        result = await self._call(lambda: self._twilio().messages.create_async(**params))
        return Receipt(provider_id=str(result.sid))

    async def list_inbound(self, since: datetime) -> list[InboundSms]:
        """The messages our number (or messaging service) received since ``since``, every
        page of Twilio's Messages list, oldest first; raises a classified error.

        With a phone number the list is asked for messages sent to it; a messaging service
        has no such filter, so its own are kept by ``messaging_service_sid``.
        """
        params: dict[str, Any] = {"date_sent_after": since, "page_size": INBOUND_PAGE_SIZE}
        if not self.messaging_service_sid:
            params["to"] = self.from_number
        records = await self._call(lambda: self._twilio().messages.list_async(**params))
        return inbound_only(
            records, number=self.from_number, service_sid=self.messaging_service_sid
        )

    async def check(self) -> str:
        """Fetch our account; one line starting with OK or FAIL."""
        sid = self.account_sid
        try:
            account = await self._call(lambda: self._twilio().api.v2010.accounts(sid).fetch_async())
        except DeliveryError as exc:
            return f"FAIL twilio {self.api_url}: {exc}"
        return f"OK twilio {self.api_url}: account {sid} is {account.status}"

    async def aclose(self) -> None:
        """Close the aiohttp session (an unclosed one warns at exit)."""
        if self._http is not None:
            await self._http.close()
        self._http = None
        self._client = None

    async def _call(self, make: Any) -> Any:
        try:
            async with asyncio.timeout(self.timeout):
                return await make()
        except TimeoutError as exc:
            raise TransientError(
                f"Twilio request to {self.api_url} timed out after {self.timeout:g}s"
            ) from exc
        except TwilioRestException as exc:
            raise classify_twilio_error(
                exc.status, exc.code, str(exc.msg), parse_retry_after(_retry_after.get())
            ) from exc
        except TwilioException as exc:
            # RFC 9457 errors (TwilioServiceException) carry the same fields.
            status = getattr(exc, "status", None)
            code = getattr(exc, "code", None)
            detail = getattr(exc, "detail", None) or getattr(exc, "title", "") or repr(exc)
            raise classify_twilio_error(
                status, code, str(detail), parse_retry_after(_retry_after.get())
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise TransientError(f"Twilio connection to {self.api_url}: {exc}") from exc
