"""Templates: every kind on every channel in every language, safe and strict."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from pgnotify.channels.base import EmailMessage, InappMessage, SmsMessage
from pgnotify.compose import Composer, render_preview
from pgnotify.context import build_context
from pgnotify.errors import PermanentError, SkipNotification
from pgnotify.segments import count_segments
from pgnotify.settings import Settings, load_settings
from pgnotify.templates import PARTS, TemplateRenderer
from tests.samples import SHOP_ID, claimed, minimal, raw

# The kinds with templates; tests/sql/test_catalog.py checks they are pgnotify.kinds.
KINDS = TemplateRenderer().kinds
CHANNELS = tuple(PARTS)
RECIPIENTS = {"email": "maria@example.com", "sms": "+34600111222", "inapp": "user-1"}


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load_settings(FROM_EMAIL="noreply@pgnotify.example")


@pytest.fixture(scope="module")
def composer(settings: Settings) -> Composer:
    return Composer(settings, TemplateRenderer())


def test_every_template_compiles_in_every_language() -> None:
    renderer = TemplateRenderer()
    assert {"en", "es"} <= renderer.locales
    compiled = renderer.compile_all()
    parts = sum(len(PARTS[c]) for kind in KINDS for c in renderer.channels_of(kind))
    assert len(compiled) == len(renderer.locales) * parts
    # Only the shop's alerts leave a channel out (in-app: a shop has no inbox).
    assert {kind: renderer.channels_of(kind) for kind in KINDS if kind.startswith("shop_")} == {
        kind: ["email", "sms"] for kind in KINDS if kind.startswith("shop_")
    }
    assert all(renderer.channels_of(k) == list(PARTS) for k in KINDS if not k.startswith("shop_"))


# Each kind on each channel its folder holds (tests/sql/test_catalog.py checks the database).
KIND_CHANNELS = [(k, c) for k in KINDS for c in TemplateRenderer().channels_of(k)]


@pytest.mark.parametrize("locale", ["en", "es"])
@pytest.mark.parametrize(("kind", "channel"), KIND_CHANNELS)
@pytest.mark.parametrize("sample", [raw, minimal])
def test_every_kind_renders_on_every_channel_in_every_language(
    composer: Composer, kind: str, channel: str, locale: str, sample: object
) -> None:
    context = sample(customer={"locale": locale}) if sample is raw else minimal()  # type: ignore[operator]
    if sample is minimal:
        context["customer"]["locale"] = locale
    message = composer.compose(
        claimed(kind, channel, recipient=RECIPIENTS[channel], context=context)
    )
    if isinstance(message, EmailMessage):
        assert message.subject and "\n" not in message.subject
        assert "Studio Nine" in message.html and "Haircut" in message.text
        # The zone once, after the end: "15:30–16:15 CET".
        assert "15:30–16:15 CET" in message.text and "15:30–16:15 CET" in message.html
        assert message.html.lstrip().startswith("<!DOCTYPE html>")
        # Nothing is loaded from elsewhere (no logo configured, no stylesheet); the only
        # addresses are links the customer may follow (the map of the shop's address).
        assert "src=" not in message.html and "<link" not in message.html
        assert set(re.findall(r"https?://[^/\s\"]+", message.html)) <= {"https://www.google.com"}
    elif isinstance(message, SmsMessage):
        assert "Haircut" in message.body
        assert count_segments(message.body).segments == 1
    else:
        assert isinstance(message, InappMessage)
        assert message.title and message.body and "Haircut" in message.body


def test_spanish_is_spanish(composer: Composer) -> None:
    context = raw(customer={"locale": "es"}, booking={"cancellation_reason": "Enfermedad"})
    email = composer.compose(claimed("booking_cancelled", context=context))
    assert isinstance(email, EmailMessage)
    assert email.subject == "Cancelada: Haircut el mar 1 dic a las 15:30 CET"
    assert "martes, 1 de diciembre de 2026" in email.text
    assert "Motivo" in email.html and "Enfermedad" in email.html
    sms = composer.compose(
        claimed("booking_confirmed", "sms", recipient="+34600111222", context=context)
    )
    assert isinstance(sms, SmsMessage)
    assert sms.body.startswith("Studio Nine: tu cita de Haircut con Ana esta confirmada")
    assert count_segments(sms.body).encoding == "GSM-7"  # "está" folded, one GSM segment


def test_an_unsupported_language_falls_back_to_english(composer: Composer) -> None:
    email = composer.compose(claimed(context=raw(customer={"locale": "fr-FR"})))
    assert isinstance(email, EmailMessage)
    assert email.subject.startswith("Confirmed:")


def test_cancellations_show_the_reason_and_carry_a_cancel_invitation(composer: Composer) -> None:
    email = composer.compose(
        claimed("booking_cancelled", context=raw(booking={"cancellation_reason": "Staff ill"}))
    )
    assert isinstance(email, EmailMessage)
    assert "Staff ill" in email.text and "Staff ill" in email.html
    assert email.ics_method == "CANCEL" and email.ics and "STATUS:CANCELLED" in email.ics


def test_the_two_hour_reminder_is_short(composer: Composer) -> None:
    short = composer.compose(claimed("reminder_2h"))
    full = composer.compose(claimed("reminder_24h"))
    assert isinstance(short, EmailMessage) and isinstance(full, EmailMessage)
    assert len(short.text) < len(full.text) * 0.7
    assert short.subject.startswith("Starting soon")


def test_script_in_any_field_is_escaped_in_html_and_kept_verbatim_in_text(
    composer: Composer,
) -> None:
    evil = "<script>alert(1)</script>"
    context = raw(
        shop={"name": evil, "address": evil},
        staff={"name": evil},
        service={"name": evil},
        customer={"name": evil},
        booking={"cancellation_reason": evil},
    )
    email = composer.compose(claimed("booking_cancelled", context=context))
    assert isinstance(email, EmailMessage)
    assert "<script>" not in email.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in email.html
    assert evil in email.text  # text is not HTML: no entities there
    sms = composer.compose(
        claimed("booking_cancelled", "sms", recipient="+34600111222", context=context)
    )
    assert isinstance(sms, SmsMessage) and evil in sms.body


def test_newlines_in_names_never_reach_a_header(composer: Composer) -> None:
    context = raw(customer={"name": "Eve\r\nBcc: all@evil.example"}, shop={"name": "Shop\nX: y"})
    email = composer.compose(claimed(context=context))
    assert isinstance(email, EmailMessage)
    assert email.to_name == "Eve Bcc: all@evil.example"
    assert "\n" not in email.subject and "\n" not in email.from_name


def test_sms_fits_one_segment_for_typical_data_and_two_with_long_names(composer: Composer) -> None:
    long_names = raw(
        shop={"name": "The Very Long Named Barbershop & Beauty Salon of Greater Springfield"},
        service={"name": "Full head colour, cut, blow-dry and deep conditioning"},
        staff={"name": "Maximiliana Fernandez-Villaverde"},
        booking={"cancellation_reason": "The stylist is unwell today and we are very sorry"},
    )
    for locale in ("en", "es"):
        for kind in KINDS:
            long_names["customer"]["locale"] = locale
            typical = composer.compose(
                claimed(
                    kind, "sms", recipient="+34600111222", context=raw(customer={"locale": locale})
                )
            )
            assert isinstance(typical, SmsMessage)
            assert count_segments(typical.body).segments == 1, (kind, locale, typical.body)
            long = composer.compose(
                claimed(kind, "sms", recipient="+34600111222", context=long_names)
            )
            assert isinstance(long, SmsMessage)
            assert count_segments(long.body).segments <= 2, (kind, locale, long.body)


def _write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_a_shop_override_replaces_only_the_files_it_has(tmp_path: Path) -> None:
    _write(tmp_path, f"shops/{SHOP_ID}/en/booking_confirmed/sms.txt", "Custom: {{ time }}")
    _write(
        tmp_path,
        f"shops/{SHOP_ID}/en/layout.html",
        "<html>{% block heading %}{% endblock %}</html>",
    )
    renderer = TemplateRenderer([tmp_path, TemplateRenderer().roots[0]])
    composer = Composer(load_settings(), renderer)
    sms = composer.compose(claimed("booking_confirmed", "sms", recipient="+34600111222"))
    assert isinstance(sms, SmsMessage) and sms.body == "Custom: 15:30 CET"
    email = composer.compose(claimed("booking_confirmed"))
    assert isinstance(email, EmailMessage)
    assert email.html.strip() == "<html>Your booking is confirmed</html>"  # shop layout
    assert email.subject.startswith("Confirmed:")  # default subject
    other_shop = raw(shop={"id": "00000000-0000-0000-0000-000000000000"})
    default = composer.compose(
        claimed("booking_confirmed", "sms", recipient="+1555", context=other_shop)
    )
    assert isinstance(default, SmsMessage) and default.body.startswith("Studio Nine:")


def test_a_missing_variable_is_a_permanent_error_naming_the_template(tmp_path: Path) -> None:
    _write(tmp_path, f"shops/{SHOP_ID}/en/booking_confirmed/sms.txt", "Hi {{ customer.nickname }}")
    composer = Composer(load_settings(), TemplateRenderer([tmp_path, TemplateRenderer().roots[0]]))
    with pytest.raises(PermanentError, match=r"template booking_confirmed/sms.txt .*nickname"):
        composer.compose(claimed("booking_confirmed", "sms", recipient="+34600111222"))


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("{% if %}", "syntax error"),
        ("{{ ''.__class__.__mro__ }}", "unsafe"),
        ("{{ 1 / 0 }}", "ZeroDivisionError"),
        ("{{ '' }}   ", "rendered empty"),
    ],
)
def test_broken_or_hostile_shop_templates_fail_permanently(
    tmp_path: Path, source: str, reason: str
) -> None:
    _write(tmp_path, f"shops/{SHOP_ID}/en/booking_confirmed/sms.txt", source)
    composer = Composer(load_settings(), TemplateRenderer([tmp_path, TemplateRenderer().roots[0]]))
    with pytest.raises(PermanentError, match=reason):
        composer.compose(claimed("booking_confirmed", "sms", recipient="+34600111222"))


def test_a_spanish_customer_of_a_shop_that_customised_english_reads_spanish(tmp_path: Path) -> None:
    _write(tmp_path, f"shops/{SHOP_ID}/en/booking_confirmed/sms.txt", "Custom english")
    composer = Composer(load_settings(), TemplateRenderer([tmp_path, TemplateRenderer().roots[0]]))
    context = raw(customer={"locale": "es"})
    sms = composer.compose(
        claimed("booking_confirmed", "sms", recipient="+34600111222", context=context)
    )
    assert isinstance(sms, SmsMessage) and "tu cita" in sms.body


def test_stale_gone_or_unaddressed_notifications_are_skipped(composer: Composer) -> None:
    with pytest.raises(SkipNotification, match="no recipient"):
        composer.compose(claimed(recipient=None))
    with pytest.raises(SkipNotification, match="no longer exists"):
        composer.compose(replace(claimed(), context=None))
    with pytest.raises(SkipNotification, match="booking moved"):
        composer.compose(replace(claimed(), stale_reason="booking moved"))


def test_compose_batch_builds_each_booking_context_once_and_isolates_failures(
    composer: Composer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pgnotify.compose as compose_module

    calls: list[object] = []

    def counting(raw_context: object, **kwargs: object) -> object:
        calls.append(raw_context)
        return build_context(raw_context, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(compose_module, "build_context", counting)
    context = raw()
    batch = [
        claimed("booking_confirmed", "email", id=1, context=context),
        claimed("booking_confirmed", "sms", id=2, recipient="+34600111222", context=context),
        claimed("booking_confirmed", "inapp", id=3, recipient="user", context=context),
        claimed("booking_confirmed", "email", id=4, recipient=None, context=context),
    ]
    out = composer.compose_batch(batch)
    assert [type(m).__name__ for m in out] == [
        "EmailMessage",
        "SmsMessage",
        "InappMessage",
        "SkipNotification",
    ]
    assert len(calls) == 1


def test_message_ids_are_stable_per_notification(composer: Composer) -> None:
    first = composer.compose(claimed(id=55))
    again = composer.compose(claimed(id=55))
    assert isinstance(first, EmailMessage) and isinstance(again, EmailMessage)
    assert first.message_id == again.message_id == "<pgnotify.55@pgnotify.example>"


def test_preview_prints_subject_text_and_writes_the_html(
    settings: Settings, tmp_path: Path
) -> None:
    out = render_preview(settings, "booking_confirmed", raw(), locale="es", html_dir=tmp_path)
    assert "Subject: Confirmada: Haircut" in out
    assert "== sms (es, 1 segment(s), GSM-7" in out and "== inapp (es) ==" in out
    (html_file,) = tmp_path.glob("*.html")
    assert f"HTML: {html_file}" in out and "<!DOCTYPE html>" in html_file.read_text()


@pytest.mark.parametrize(
    ("locale", "line"),
    [("en", "You confirmed your attendance."), ("es", "Has confirmado tu asistencia.")],
)
def test_booking_emails_say_the_customer_confirmed_once_they_replied_c(
    composer: Composer, locale: str, line: str
) -> None:
    confirmed = raw(
        customer={"locale": locale},
        booking={"customer_confirmed_at": "2027-05-09T18:02:00+00:00"},
    )
    for kind in ("reminder_24h", "reminder_2h", "booking_rescheduled"):
        shown = composer.compose(claimed(kind, context=confirmed))
        silent = composer.compose(claimed(kind, context=raw(customer={"locale": locale})))
        assert isinstance(shown, EmailMessage) and isinstance(silent, EmailMessage)
        assert line in shown.text and line in shown.html, kind
        assert line not in silent.text and line not in silent.html, kind


@pytest.fixture(scope="module")
def linked() -> Composer:
    """A composer with signed links on."""
    return Composer(
        load_settings(
            FROM_EMAIL="noreply@pgnotify.example",
            NOTIFICATION_LINK_BASE_URL="https://book.studionine.example",
            NOTIFICATION_LINK_SECRET="s3cret",
        ),
        TemplateRenderer(),
    )


@pytest.mark.parametrize(
    ("locale", "note", "confirmed"),
    [
        ("en", "An automated alert about a booking at your shop.", "The customer confirmed"),
        ("es", "Aviso automático sobre una reserva en tu negocio.", "El cliente ha confirmado"),
    ],
)
def test_a_shop_alert_lets_the_shop_reach_the_customer_and_carries_no_customer_link(
    linked: Composer, locale: str, note: str, confirmed: str
) -> None:
    """The customer's signed manage link is theirs alone; the shop gets the customer's
    email and phone as links, a footer addressed to it, and the customer's C reply in the
    third person."""
    context = raw(
        shop={"locale": locale}, booking={"customer_confirmed_at": "2027-05-09T18:02:00+00:00"}
    )
    for kind in ("shop_booking_confirmed", "shop_booking_cancelled"):
        n = replace(claimed(kind, context=context), audience="shop")
        email = linked.compose(n)
        assert isinstance(email, EmailMessage)
        for part in (email.text, email.html):
            assert "book.studionine.example" not in part, kind
            assert note in part and confirmed in part, kind
            assert "about your booking" not in part and "sobre tu reserva." not in part, kind
        assert 'href="mailto:maria@example.com"' in email.html, kind
        assert 'href="tel:+34600111222"' in email.html, kind


def test_body_phone_numbers_are_tel_links(linked: Composer) -> None:
    """Where an email asks the customer to call, the number is a `tel:` link."""
    for locale in ("en", "es"):
        for kind in ("booking_confirmed", "booking_cancelled", "payment_failed"):
            email = linked.compose(claimed(kind, context=raw(customer={"locale": locale})))
            assert isinstance(email, EmailMessage)
            assert email.html.count('href="tel:+34911234567"') == 2, (locale, kind)


def test_sms_with_links_fit_two_segments_for_typical_data(linked: Composer) -> None:
    """The manage link (about 120 characters) in the confirmation and reminder SMS: each
    still within 2 GSM-7 segments, in both languages, and the others carry no link."""
    for locale in ("en", "es"):
        for kind in KINDS:
            sms = linked.compose(
                claimed(
                    kind, "sms", recipient="+34600111222", context=raw(customer={"locale": locale})
                )
            )
            assert isinstance(sms, SmsMessage)
            count = count_segments(sms.body)
            assert (count.encoding, count.segments) == ("GSM-7", 2 if "token=" in sms.body else 1)
            has_link = kind in ("booking_confirmed", "reminder_24h", "reminder_2h")
            assert ("https://book.studionine.example/bookings/" in sms.body) == has_link, kind
