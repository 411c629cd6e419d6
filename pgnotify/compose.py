"""Turn a claimed notification into the message its channel sends.

Composing is pure apart from the compiled-template cache: it reads ``n.context`` (the raw
sections SQL loaded for the batch) and ``n.recipient``, and returns an ``EmailMessage``,
``SmsMessage`` or ``InappMessage``. Values that end up in email headers (names, subject)
are flattened to one line here, so a hostile name with a newline still gets its email;
``channels/mime.py`` remains the gate that refuses anything unsafe.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pgnotify.channels.base import EmailMessage, InappMessage, Message, SmsMessage
from pgnotify.channels.mime import is_valid_address
from pgnotify.context import build_context
from pgnotify.errors import DeliveryError, PermanentError, SkipNotification
from pgnotify.ics import ICS_METHODS, build_ics
from pgnotify.model import ClaimedNotification
from pgnotify.outcome import classify
from pgnotify.segments import count_segments, fold_to_gsm7
from pgnotify.settings import Settings
from pgnotify.templates import PARTS, TemplateRenderer
from pgnotify.text import one_line

_BLANK_LINES = re.compile(r"\n(?:[ \t]*\n){2,}")
_MAX_NAME = 100


class Composer:
    """Renders notifications with one ``TemplateRenderer`` and the sender's settings."""

    def __init__(self, settings: Settings, renderer: TemplateRenderer) -> None:
        self.renderer = renderer
        self.from_email = settings.FROM_EMAIL
        self.message_id_domain = settings.FROM_EMAIL.rpartition("@")[2] or "localhost"

    def message_id(self, notification_id: int) -> str:
        """The Message-ID of a notification: the same on every retry, so duplicates thread."""
        return f"<pgnotify.{notification_id}@{self.message_id_domain}>"

    def compose(
        self,
        n: ClaimedNotification,
        *,
        context: Mapping[str, Any] | None = None,
        locale: str | None = None,
    ) -> Message:
        """Render ``n`` for its channel.

        ``context`` is a ready ``build_context`` result (``compose_batch`` shares one per
        booking); ``locale`` forces a language (previews). Raises ``SkipNotification``
        when the notification is stale, its booking is gone or it has no recipient, and
        ``PermanentError`` for unknown channels and template failures.
        """
        if n.stale_reason:
            raise SkipNotification(n.stale_reason)
        if n.context is None:
            raise SkipNotification("booking no longer exists")
        if not n.recipient:
            raise SkipNotification(f"no recipient for channel {n.channel}")
        ctx = context if context is not None else build_context(n.context, locale=locale)
        if n.channel == "email":
            return self._email(n, n.recipient, ctx)
        if n.channel == "sms":
            body = fold_to_gsm7(self._render(n.kind, "sms.txt", ctx))
            return SmsMessage(n.id, n.recipient, body)
        if n.channel == "inapp":
            title = one_line(self._render(n.kind, "inapp_title.txt", ctx))
            return InappMessage(n.id, title, self._render(n.kind, "inapp_body.txt", ctx))
        raise PermanentError(f"no templates for channel {n.channel!r}")

    def compose_batch(self, batch: Sequence[ClaimedNotification]) -> list[Message | DeliveryError]:
        """Compose a claimed batch, building each booking's context once.

        The result is parallel to ``batch``: a message, or the ``DeliveryError`` that
        notification ended with (the others are unaffected).
        """
        contexts: dict[tuple[object, object], dict[str, Any]] = {}
        out: list[Message | DeliveryError] = []
        for n in batch:
            try:
                ctx = None
                if n.context is not None and n.booking_id is not None:
                    key = (n.booking_id, n.payment_id)
                    ctx = contexts.get(key)
                    if ctx is None:
                        ctx = contexts[key] = build_context(n.context)
                out.append(self.compose(n, context=ctx))
            except DeliveryError as exc:
                out.append(exc)
            except Exception as exc:
                # A bug (or data we did not foresee) costs this notification an attempt,
                # never the batch or the worker.
                out.append(classify(exc))
        return out

    def _render(self, kind: str, part: str, ctx: Mapping[str, Any]) -> str:
        shop_id = ctx["shop"].get("id")
        return self.renderer.render(
            kind, part, ctx, locale=ctx["locale"], shop_id=str(shop_id) if shop_id else None
        )

    def _email(self, n: ClaimedNotification, to: str, ctx: Mapping[str, Any]) -> EmailMessage:
        shop = ctx["shop"]
        reply_to = shop.get("email")
        ics = None
        method = ICS_METHODS.get(n.kind)
        if method and ctx["starts_at"] is not None and n.context is not None:
            ics = build_ics(method, n.context, organizer_email=self.from_email, attendee_email=to)
        return EmailMessage(
            notification_id=n.id,
            to_address=to,
            to_name=one_line(str(ctx["customer"].get("name") or ""), _MAX_NAME),
            from_name=one_line(str(shop.get("name") or ""), _MAX_NAME),
            # A malformed shop address must not cost the customer the email: drop it.
            reply_to=reply_to if reply_to and is_valid_address(reply_to) else None,
            subject=one_line(self._render(n.kind, "email_subject.txt", ctx)),
            text=_BLANK_LINES.sub("\n\n", self._render(n.kind, "email.txt", ctx)) + "\n",
            html=self._render(n.kind, "email.html", ctx) + "\n",
            message_id=self.message_id(n.id),
            ics=ics,
            ics_method=method if ics else None,
        )


def render_preview(
    settings: Settings,
    kind: str,
    raw_context: Mapping[str, Any],
    *,
    channel: str | None = None,
    locale: str | None = None,
    html_dir: Path | None = None,
) -> str:
    """What ``pgnotify render`` prints: every channel's text (or one channel's).

    The HTML body is written to a temporary ``.html`` file (in ``html_dir`` when given)
    whose path is printed. Template errors are printed in place of the part they broke.
    """
    composer = Composer(settings, TemplateRenderer.from_settings(settings))
    ctx = build_context(raw_context, locale=locale)
    customer = ctx["customer"]
    recipients = {
        "email": customer.get("email") or "customer@example.com",
        "sms": customer.get("phone") or "+15550000000",
        "inapp": customer.get("user_id") or "user",
    }
    sections = []
    for name in [channel] if channel else list(PARTS):
        n = ClaimedNotification(
            id=0,
            kind=kind,
            channel=name,
            recipient=recipients.get(name, "preview"),
            booking_id=None,
            payment_id=None,
            attempts=0,
            run_at=ctx["starts_at"] or datetime.now(UTC),
            context=dict(raw_context),
        )
        try:
            message = composer.compose(n, context=ctx)
        except DeliveryError as exc:
            sections.append(f"== {name} ==\nERROR: {exc}")
            continue
        if isinstance(message, EmailMessage):
            with tempfile.NamedTemporaryFile(
                "w", suffix=".html", prefix=f"pgnotify-{kind}-", dir=html_dir, delete=False
            ) as fh:
                fh.write(message.html)
            sections.append(
                f"== email ({ctx['locale']}) ==\nTo: {message.to_name} <{message.to_address}>\n"
                f"Subject: {message.subject}\nICS: {message.ics_method or 'none'}\n\n"
                f"{message.text.rstrip()}\n\nHTML: {fh.name}"
            )
        elif isinstance(message, SmsMessage):
            seg = count_segments(message.body)
            sections.append(
                f"== sms ({ctx['locale']}, {seg.segments} segment(s), {seg.encoding}, "
                f"{seg.units} units) ==\n{message.body}"
            )
        else:
            sections.append(f"== inapp ({ctx['locale']}) ==\n{message.title}\n\n{message.body}")
    return "\n\n".join(sections) + "\n"
