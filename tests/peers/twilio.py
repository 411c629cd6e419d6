"""A Twilio-shaped HTTP server for tests, driven through the real twilio client.

``TwilioPeer`` runs an aiohttp application on 127.0.0.1 (free port) in its own thread and
loop, so it keeps answering whatever the test's loop is doing. It serves
``POST /2010-04-01/Accounts/{sid}/Messages.json`` (201 and a ``SM...`` sid, recording
To/From/Body/MessagingServiceSid and arrival time), ``GET /2010-04-01/Accounts/{sid}.json``,
and ``GET /2010-04-01/Accounts/{sid}/Messages.json``: the Messages list, as Twilio pages it
(newest first; ``To``, ``From``, ``DateSent``, ``DateSent>``, ``DateSent<`` filters;
``PageSize`` up to ``max_page_size``, ``Page``; ``next_page_uri`` and the other paging
fields), holding the messages sent through it and the replies a test adds (``receive``).

Each request is handled in Twilio's order:

1. authentication: HTTP basic with the account SID and auth token, for the account in the
   path; anything else is 401 with code 20003, whatever answers are programmed;
2. (Messages only) the form parameters, as Twilio validates them: ``To`` missing (21604), not
   E.164 or equal to ``From`` (21211), neither ``From`` nor ``MessagingServiceSid``
   (21603), neither ``Body`` nor ``MediaUrl`` (21602), each a 400;
3. the answers a test programmed (``fail_next``, ``answer_next``, ``stall_next``): an error
   (400 21211/21610, 401 20003, 429 with Retry-After, 500) or a stall;
4. the created message or the account.

Programmed answers belong to the next *authenticated* requests, in arrival order; a stall
comes before the form is read and validated (step 2), an error after it.

Every error carries Twilio's JSON error document (``code``, ``message``, ``more_info``,
``status``), so the real client raises ``TwilioRestException`` with that code.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import urlencode

from aiohttp import BasicAuth, web

from tests.peers.smtp import free_port

ACCOUNT_SID = "AC" + "0" * 31 + "1"
AUTH_TOKEN = "test-token"

E164 = re.compile(r"\+[1-9][0-9]{1,14}")
"""Twilio's phone number format: ``+``, country code and subscriber number, 15 digits at most."""


def error_document(status: int, code: int, message: str) -> dict[str, Any]:
    """The JSON body of a Twilio REST error, as the twilio client parses it."""
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


def invalid_message(form: Any) -> tuple[int, str] | None:
    """Twilio's code and message for a Messages create request it refuses, else ``None``."""
    to = str(form.get("To", ""))
    from_ = str(form.get("From", ""))
    if not to:
        return 21604, "A 'To' phone number is required."
    if not E164.fullmatch(to) or to == from_:
        return 21211, f"The 'To' number {to} is not a valid phone number."
    if not from_ and not form.get("MessagingServiceSid"):
        return 21603, "A 'From' or 'MessagingServiceSid' parameter is required to send a message."
    if not form.get("Body") and not form.get("MediaUrl"):
        return 21602, "Message body is required."
    return None


@dataclass(frozen=True)
class ReceivedSms:
    """One Messages.json POST the server accepted."""

    account_sid: str
    to: str
    from_: str | None
    body: str
    messaging_service_sid: str | None
    sid: str
    monotonic: float
    wall: float


@dataclass
class _Answer:
    status: int
    payload: dict[str, Any] | None
    headers: dict[str, str]
    stall: float


class TwilioPeer:
    """Fake Twilio REST API; ``base_url`` goes in ``TWILIO_API_URL``."""

    def __init__(self, account_sid: str = ACCOUNT_SID, auth_token: str = AUTH_TOKEN) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.host = "127.0.0.1"
        self.port = free_port()
        self.base_url = f"http://{self.host}:{self.port}"
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []
        self._messages: list[ReceivedSms] = []
        self._replies: list[dict[str, Any]] = []
        self.max_page_size = 1000
        self._answers: deque[_Answer] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def messages(self) -> list[ReceivedSms]:
        with self.lock:
            return list(self._messages)

    def receive(
        self,
        from_: str,
        body: str,
        *,
        to: str | None = "+15005550006",
        sent: datetime | None = None,
        messaging_service_sid: str | None = None,
    ) -> str:
        """A customer's reply arrives at Twilio; returns its MessageSid."""
        sid = "SM" + uuid.uuid4().hex
        with self.lock:
            self._replies.append(
                {
                    "sid": sid,
                    "from": from_,
                    "to": to,
                    "body": body,
                    "messaging_service_sid": messaging_service_sid,
                    "direction": "inbound",
                    "date_sent": sent or datetime.now(UTC),
                }
            )
        return sid

    def answer_next(
        self,
        status: int,
        payload: dict[str, Any] | None = None,
        *,
        headers: dict[str, str] | None = None,
        count: int = 1,
        stall: float = 0.0,
    ) -> None:
        """Answer the next ``count`` requests with this status and JSON body."""
        with self.lock:
            self._answers.extend(
                _Answer(status, payload, headers or {}, stall) for _ in range(count)
            )

    def fail_next(
        self,
        status: int,
        *,
        code: int,
        message: str | None = None,
        retry_after: str | None = None,
        count: int = 1,
    ) -> None:
        """Answer with HTTP ``status`` and a Twilio error document carrying ``code``.

        For example ``fail_next(400, code=21610)`` or ``fail_next(429, code=20429,
        retry_after="30")``.
        """
        payload = error_document(status, code, message or f"Simulated Twilio error {code}")
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        self.answer_next(status, payload, headers=headers, count=count)

    def stall_next(self, seconds: float, *, count: int = 1) -> None:
        """Wait ``seconds`` before handling the next ``count`` requests normally."""
        with self.lock:
            self._answers.extend(_Answer(0, None, {}, seconds) for _ in range(count))

    def start(self) -> TwilioPeer:
        self._thread = threading.Thread(target=self._serve, name="twilio-peer", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("twilio peer did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._runner is not None:
            runner = self._runner
            asyncio.run_coroutine_threadsafe(runner.cleanup(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        app = web.Application()
        app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", self._create_message)
        app.router.add_get("/2010-04-01/Accounts/{sid}/Messages.json", self._list_messages)
        app.router.add_get("/2010-04-01/Accounts/{sid}.json", self._fetch_account)
        self._runner = web.AppRunner(app, access_log=None)
        loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, self.host, self.port)
        loop.run_until_complete(site.start())
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    def _arrived(self, request: web.Request) -> None:
        with self.lock:
            self.requests.append((request.method, request.path))

    async def _next_answer(self) -> _Answer | None:
        """Take the next programmed answer and wait out its stall, if it has one."""
        with self.lock:
            answer = self._answers.popleft() if self._answers else None
        if answer is not None and answer.stall:
            await asyncio.sleep(answer.stall)
        return answer

    @staticmethod
    def _programmed(answer: _Answer | None) -> web.Response | None:
        if answer is None or not answer.status:
            return None
        return web.json_response(answer.payload, status=answer.status, headers=answer.headers)

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        try:
            auth = BasicAuth.decode(header)
        except ValueError:
            return False
        return (auth.login, auth.password) == (
            self.account_sid,
            self.auth_token,
        ) and request.match_info["sid"] == self.account_sid

    @staticmethod
    def _error(status: int, code: int, message: str) -> web.Response:
        return web.json_response(error_document(status, code, message), status=status)

    async def _create_message(self, request: web.Request) -> web.Response:
        self._arrived(request)
        if not self._authorized(request):
            return self._error(401, 20003, "Authenticate")
        answer = await self._next_answer()
        # The form is read after a stall, as before: a client that hung up meanwhile
        # creates nothing (see tests/faults/test_provider_faults.py).
        form = await request.post()
        refused = invalid_message(form)
        if refused is not None:
            return self._error(400, *refused)
        programmed = self._programmed(answer)
        if programmed is not None:
            return programmed
        sid = "SM" + uuid.uuid4().hex
        received = ReceivedSms(
            account_sid=request.match_info["sid"],
            to=str(form.get("To", "")),
            from_=str(form["From"]) if "From" in form else None,
            body=str(form.get("Body", "")),
            messaging_service_sid=(
                str(form["MessagingServiceSid"]) if "MessagingServiceSid" in form else None
            ),
            sid=sid,
            monotonic=time.monotonic(),
            wall=time.time(),
        )
        with self.lock:
            self._messages.append(received)
        return web.json_response(
            {
                "sid": sid,
                "account_sid": received.account_sid,
                "to": received.to,
                "from": received.from_,
                "body": received.body,
                "messaging_service_sid": received.messaging_service_sid,
                "status": "queued",
                "num_segments": "1",
                "direction": "outbound-api",
                "api_version": "2010-04-01",
                "uri": f"/2010-04-01/Accounts/{received.account_sid}/Messages/{sid}.json",
            },
            status=201,
        )

    def _all_messages(self) -> list[dict[str, Any]]:
        with self.lock:
            sent = [
                {
                    "sid": m.sid,
                    "from": m.from_,
                    "to": m.to,
                    "body": m.body,
                    "messaging_service_sid": m.messaging_service_sid,
                    "direction": "outbound-api",
                    "date_sent": datetime.fromtimestamp(m.wall, UTC),
                }
                for m in self._messages
            ]
            return sent + list(self._replies)

    async def _refusal(self, request: web.Request) -> web.Response | None:
        """Steps 1 and 3 for a GET: 401 unless authenticated, then a programmed answer."""
        self._arrived(request)
        if not self._authorized(request):
            return self._error(401, 20003, "Authenticate")
        return self._programmed(await self._next_answer())

    async def _list_messages(self, request: web.Request) -> web.Response:
        refused = await self._refusal(request)
        if refused is not None:
            return refused
        q = request.query
        try:
            after = _date_filter(q.get("DateSent>"))
            before = _date_filter(q.get("DateSent<"))
            on = _date_filter(q.get("DateSent"))
            page = int(q.get("Page", "0"))
            size = min(int(q.get("PageSize", "50")), self.max_page_size)
        except ValueError:
            return self._error(400, 20001, "Invalid parameter")
        chosen = [
            m
            for m in self._all_messages()
            if ("To" not in q or m["to"] == q["To"])
            and ("From" not in q or m["from"] == q["From"])
            and (after is None or m["date_sent"] >= after)
            and (before is None or m["date_sent"] <= before)
            and (on is None or m["date_sent"].date() == on.date())
        ]
        chosen.sort(key=lambda m: m["date_sent"], reverse=True)  # Twilio: newest first
        start = page * size
        shown = chosen[start : start + size]
        path = request.path
        filters = {k: v for k, v in q.items() if k not in ("Page", "PageSize", "PageToken")}

        def uri(n: int) -> str:
            return f"{path}?{urlencode({**filters, 'PageSize': size, 'Page': n})}"

        sid = request.match_info["sid"]
        return web.json_response(
            {
                "messages": [
                    {
                        "sid": m["sid"],
                        "account_sid": sid,
                        "from": m["from"],
                        "to": m["to"],
                        "body": m["body"],
                        "messaging_service_sid": m["messaging_service_sid"],
                        "direction": m["direction"],
                        "status": "received" if m["direction"] == "inbound" else "sent",
                        "num_segments": "1",
                        "date_sent": format_datetime(m["date_sent"]),
                        "api_version": "2010-04-01",
                        "uri": f"/2010-04-01/Accounts/{sid}/Messages/{m['sid']}.json",
                    }
                    for m in shown
                ],
                "page": page,
                "page_size": size,
                "start": start,
                "end": start + len(shown) - 1 if shown else start,
                "uri": uri(page),
                "first_page_uri": uri(0),
                "previous_page_uri": uri(page - 1) if page > 0 else None,
                "next_page_uri": uri(page + 1) if start + size < len(chosen) else None,
            }
        )

    async def _fetch_account(self, request: web.Request) -> web.Response:
        refused = await self._refusal(request)
        if refused is not None:
            return refused
        return web.json_response(
            {
                "sid": self.account_sid,
                "friendly_name": "pgnotify tests",
                "status": "active",
                "type": "Full",
            }
        )


def _date_filter(value: str | None) -> datetime | None:
    """A DateSent filter as Twilio accepts it: ``YYYY-MM-DD`` or ISO 8601 with ``Z``."""
    if value is None:
        return None
    if len(value) == 10:
        return datetime.fromisoformat(value).replace(tzinfo=UTC)
    return datetime.fromisoformat(value.replace("Z", "+00:00"))
