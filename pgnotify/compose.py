"""Turn a claimed notification into the message its channel sends.

Composing is pure apart from the compiled-template cache and the render pool: it reads
``n.context`` (the raw sections SQL loaded for the batch) and ``n.recipient``, and returns
an ``EmailMessage``, ``SmsMessage`` or ``InappMessage``. Each message is its channel's parts,
rendered, then assembled (``_assemble``, pure). A part that reads one of the shop's own
files renders in the render pool (``render_pool.py``), under a time and memory budget; the
others (shipped and operator templates) render inline, on the hot path. Values that end up
in email headers (names, subject) are flattened to one line here, so a hostile name with a
newline still gets its email; ``channels/mime.py`` remains the gate that refuses anything
unsafe.
"""

from __future__ import annotations

import asyncio
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
from pgnotify.render_pool import RenderPool, ShopSource
from pgnotify.segments import cap_sms, count_segments, fold_to_gsm7, shorten_for_sms
from pgnotify.settings import Settings
from pgnotify.templates import PARTS, TemplateRenderer
from pgnotify.text import one_line, storable

_BLANK_LINES = re.compile(r"\n(?:[ \t]*\n){2,}")
_MAX_NAME = 100


class Composer:
    """Renders notifications with one ``TemplateRenderer`` and the sender's settings."""

    def __init__(self, settings: Settings, renderer: TemplateRenderer) -> None:
        self.renderer = renderer
        self.from_email = settings.FROM_EMAIL
        self.message_id_domain = settings.FROM_EMAIL.rpartition("@")[2] or "localhost"
        self.links = settings.link_signer
        # Starts its processes on the first shop template; close() stops them.
        self.pool = RenderPool(
            renderer.roots,
            timeout=settings.NOTIFICATION_RENDER_TIMEOUT,
            memory_mb=settings.NOTIFICATION_RENDER_MEMORY_MB,
        )

    def close(self) -> None:
        """Stop the render pool's processes (a later shop template starts them again)."""
        self.pool.close()

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
        ctx = self._context(n, context, locale)
        data = _channel_context(n.channel, ctx)
        shop_parts = {
            part: self.pool.render_blocking(
                source, n.kind, part, data, locale=data["locale"], shop_id=source.shop_id
            )
            for part, source in self._budgeted_parts(n, ctx).items()
        }
        return self._finish(n, ctx, data, shop_parts)

    async def _acompose(
        self, n: ClaimedNotification, ctx: Mapping[str, Any], budgeted: Mapping[str, ShopSource]
    ) -> Message:
        """``compose`` awaiting the render pool, so the event loop goes on meanwhile."""
        data = _channel_context(n.channel, ctx)
        shop_parts = {
            part: await self.pool.render(
                source, n.kind, part, data, locale=data["locale"], shop_id=source.shop_id
            )
            for part, source in budgeted.items()
        }
        return self._finish(n, ctx, data, shop_parts)

    def _finish(
        self,
        n: ClaimedNotification,
        ctx: Mapping[str, Any],
        data: Mapping[str, Any],
        shop_parts: Mapping[str, str],
    ) -> Message:
        """Render inline every part the shop has no file for, then assemble the message."""
        # Those parts read no shop file, so they render without the shop's folder.
        parts = {
            part: shop_parts[part]
            if part in shop_parts
            else self.renderer.render(n.kind, part, data, locale=data["locale"])
            for part in PARTS[n.channel]
        }
        return self._assemble(n, ctx, parts)

    def compose_batch(self, batch: Sequence[ClaimedNotification]) -> list[Message | DeliveryError]:
        """Compose a claimed batch, building each booking's context once.

        The result is parallel to ``batch``: a message, or the ``DeliveryError`` that
        notification ended with (the others are unaffected). A shop's own templates still
        render in the render pool, and this waits for them: the daemon uses
        ``acompose_batch``.
        """
        out: list[Message | DeliveryError] = []
        for n, ctx in zip(batch, self._shared_contexts(batch), strict=True):
            try:
                out.append(self.compose(n, context=ctx))
            except Exception as exc:
                out.append(classify(exc))
        return out

    async def acompose_batch(
        self, batch: Sequence[ClaimedNotification]
    ) -> list[Message | DeliveryError]:
        """``compose_batch`` for the daemon's workers.

        Notifications whose templates are all shipped or operator ones are composed
        inline, at once; those that read a shop's own files render in the render pool,
        concurrently, while the event loop (other workers, health, LISTEN) goes on.
        """
        out: list[Message | DeliveryError | None] = []
        waiting: dict[int, asyncio.Task[Message]] = {}
        for i, (n, ctx) in enumerate(zip(batch, self._shared_contexts(batch), strict=True)):
            try:
                full = self._context(n, ctx, None)
                if budgeted := self._budgeted_parts(n, full):
                    waiting[i] = asyncio.create_task(self._acompose(n, full, budgeted))
                    out.append(None)
                else:
                    out.append(self._finish(n, full, _channel_context(n.channel, full), {}))
            except Exception as exc:
                out.append(classify(exc))
        if waiting:
            try:
                await asyncio.wait(waiting.values())
            finally:
                for task in waiting.values():
                    task.cancel()  # only those still running: a shutdown cut the wait short
            for i, task in waiting.items():
                error = task.exception()
                out[i] = task.result() if error is None else classify(error)
        return [m for m in out if m is not None]

    def _shared_contexts(self, batch: Sequence[ClaimedNotification]) -> list[dict[str, Any] | None]:
        """Each row's ``build_context``, built once per booking (and payment) of the batch."""
        contexts: dict[tuple[object, object, str], dict[str, Any]] = {}
        out: list[dict[str, Any] | None] = []
        for n in batch:
            ctx = None
            if n.context is not None and n.booking_id is not None:
                # The shop's alert is in the shop's language: its own context.
                key = (n.booking_id, n.payment_id, n.audience)
                ctx = contexts.get(key)
                if ctx is None:
                    try:
                        ctx = contexts[key] = build_context(
                            n.context, audience=n.audience, links=self.links
                        )
                    except Exception:
                        ctx = None  # compose builds it again and fails that row alone
            out.append(ctx)
        return out

    def _context(
        self, n: ClaimedNotification, context: Mapping[str, Any] | None, locale: str | None
    ) -> Mapping[str, Any]:
        if n.stale_reason:
            raise SkipNotification(n.stale_reason)
        if n.context is None:
            raise SkipNotification("booking no longer exists")
        if not n.recipient:
            raise SkipNotification(f"no recipient for channel {n.channel}")
        if n.channel not in PARTS:
            raise PermanentError(f"no templates for channel {n.channel!r}")
        if context is not None:
            return context
        return build_context(n.context, locale=locale, audience=n.audience, links=self.links)

    def _budgeted_parts(
        self, n: ClaimedNotification, ctx: Mapping[str, Any]
    ) -> dict[str, ShopSource]:
        """The parts of ``n``'s message that read the shop's own files (the render pool's)."""
        shop_id = ctx["shop"].get("id")
        if not shop_id:
            return {}
        shop_id = str(shop_id)
        out = {}
        for part in PARTS[n.channel]:
            source = self.renderer.shop_source(n.kind, part, locale=ctx["locale"], shop_id=shop_id)
            if source is not None:
                out[part] = source
        return out

    def _assemble(
        self, n: ClaimedNotification, ctx: Mapping[str, Any], parts: Mapping[str, str]
    ) -> Message:
        """The message of ``n`` from its rendered parts (pure)."""
        assert n.recipient is not None  # _context skipped the others
        if n.channel == "email":
            return self._email(n, n.recipient, ctx, parts)
        if n.channel == "sms":
            return SmsMessage(n.id, n.recipient, cap_sms(fold_to_gsm7(parts["sms.txt"])))
        # Written to pgnotify.inbox with the batch's other rows: what a template rendered
        # must not fail that statement (a NUL byte would, for the whole batch).
        return InappMessage(
            n.id, storable(one_line(parts["inapp_title.txt"])), storable(parts["inapp_body.txt"])
        )

    def _email(
        self, n: ClaimedNotification, to: str, ctx: Mapping[str, Any], parts: Mapping[str, str]
    ) -> EmailMessage:
        shop = ctx["shop"]
        # To the customer, replies go to the shop; to the shop (its alerts), to the customer.
        to_shop = n.audience == "shop"
        addressee = shop if to_shop else ctx["customer"]
        reply_to = ctx["customer"].get("email") if to_shop else shop.get("email")
        ics = None
        method = ICS_METHODS.get(n.kind)
        if method and ctx["starts_at"] is not None and n.context is not None:
            ics = build_ics(
                method,
                n.context,
                organizer_email=self.from_email,
                attendee_email=to,
                sequence=n.ics_sequence,
            )
        return EmailMessage(
            notification_id=n.id,
            to_address=to,
            to_name=one_line(str(addressee.get("name") or ""), _MAX_NAME),
            from_name=one_line(str(shop.get("name") or ""), _MAX_NAME),
            # A malformed reply address must not cost the recipient the email: drop it.
            reply_to=reply_to if isinstance(reply_to, str) and is_valid_address(reply_to) else None,
            subject=one_line(parts["email_subject.txt"]),
            text=_BLANK_LINES.sub("\n\n", parts["email.txt"]) + "\n",
            html=parts["email.html"] + "\n",
            # The same on every retry, so duplicates thread.
            message_id=f"<pgnotify.{n.id}@{self.message_id_domain}>",
            ics=ics,
            ics_method=method if ics else None,
        )


def _channel_context(channel: str, ctx: Mapping[str, Any]) -> Mapping[str, Any]:
    # An SMS is short: what shops and customers typed is cut before it renders.
    return shorten_for_sms(ctx) if channel == "sms" else ctx


def render_preview(
    settings: Settings,
    kind: str,
    raw_context: Mapping[str, Any],
    *,
    channel: str | None = None,
    locale: str | None = None,
    html_dir: Path | None = None,
    audience: str = "customer",
) -> str:
    """What ``pgnotify render`` prints: every channel's text (or one channel's).

    The HTML body is written to a temporary ``.html`` file (in ``html_dir`` when given)
    whose path is printed. Template errors are printed in place of the part they broke.
    A kind for the shop (``audience="shop"``) is shown as the shop gets it: in its
    language, to its contacts, and not in-app (a shop has no inbox).
    """
    composer = Composer(settings, TemplateRenderer.from_settings(settings))
    ctx = build_context(raw_context, locale=locale, audience=audience, links=composer.links)
    to = ctx["shop"] if audience == "shop" else ctx["customer"]
    recipients = {
        "email": to.get("email") or "customer@example.com",
        "sms": to.get("phone") or "+15550000000",
        "inapp": to.get("user_id") or "user",
    }
    channels = [c for c in PARTS if audience != "shop" or c != "inapp"]
    sections = []
    for name in [channel] if channel else channels:
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
            audience=audience,
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
