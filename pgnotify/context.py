"""The template context: the raw booking sections plus what a human reads.

``build_context`` is pure and cheap (a few microseconds): it parses the timestamps once,
shows them in the shop's timezone with the zone named, and formats money and durations
for the recipient's language. Only ``en`` and ``es`` have tables; any other language is
formatted as ``en``. No Babel: two small tables cost nothing and cannot fail at import.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, tzinfo
from functools import lru_cache
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pgnotify.links import LinkSigner
from pgnotify.segments import is_e164

FORMAT_LOCALES = ("en", "es")
_LOCALE = re.compile(r"^([A-Za-z]{2,3})(?:[-_].*)?$")

_WEEKDAYS = {
    "en": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
    "es": ("lunes", "martes", "miércoles", "jueves", "viernes", "sábado", "domingo"),
}
_MONTHS = {
    "en": (
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ),
    "es": (
        "enero",
        "febrero",
        "marzo",
        "abril",
        "mayo",
        "junio",
        "julio",
        "agosto",
        "septiembre",
        "octubre",
        "noviembre",
        "diciembre",
    ),
}
_SHORT_WEEKDAYS = {
    "en": ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"),
    "es": ("lun", "mar", "mié", "jue", "vie", "sáb", "dom"),
}
_SHORT_MONTHS = {
    "en": ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"),
    "es": ("ene", "feb", "mar", "abr", "may", "jun", "jul", "ago", "sept", "oct", "nov", "dic"),
}

# Symbol per currency; the rest are shown with their ISO code. MXN gets "MX$" so a
# Mexican peso is never mistaken for a dollar in a message that crosses a border.
_SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£", "MXN": "MX$"}
# ISO 4217 minor units that are not 2; cents are the smallest unit of the currency.
_EXPONENTS = {"JPY": 0, "KRW": 0, "CLP": 0, "VND": 0, "ISK": 0, "BHD": 3, "KWD": 3, "JOD": 3}


def resolve_locale(*candidates: str | None) -> str:
    """The first usable language code among ``candidates`` (``"es-MX"`` gives ``"es"``).

    Anything that is not a plain language tag is ignored, so a hostile locale can never
    become a path; with no usable candidate the answer is ``"en"``.
    """
    for candidate in candidates:
        if candidate:
            match = _LOCALE.match(candidate.strip())
            if match:
                return match.group(1).lower()
    return "en"


@lru_cache(maxsize=512)
def shop_zone(name: str | None) -> tzinfo:
    """The ``ZoneInfo`` for an IANA name; unknown or malformed names fall back to UTC."""
    if not name:
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return UTC


def parse_timestamp(value: str | None) -> datetime | None:
    """Parse an ISO-8601 timestamp; a naive one is taken as UTC, garbage as missing."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def zone_label(moment: datetime) -> str:
    """The zone as people write it: ``CET``, ``EST``; numeric-only zones as ``UTC-03``."""
    abbreviation = moment.tzname() or ""  # what strftime("%Z") prints, without its cost
    if not abbreviation or abbreviation[0] in "+-":
        offset = moment.utcoffset() or timedelta(0)
        minutes = int(offset.total_seconds()) // 60
        sign = "-" if minutes < 0 else "+"
        hours, mins = divmod(abs(minutes), 60)
        return f"UTC{sign}{hours:02d}" + (f":{mins:02d}" if mins else "")
    return abbreviation


def format_date(moment: datetime, locale: str) -> str:
    """``Tuesday, 1 December 2026`` / ``martes, 1 de diciembre de 2026``."""
    lang = locale if locale in FORMAT_LOCALES else "en"
    weekday = _WEEKDAYS[lang][moment.weekday()]
    month = _MONTHS[lang][moment.month - 1]
    if lang == "es":
        return f"{weekday}, {moment.day} de {month} de {moment.year}"
    return f"{weekday}, {moment.day} {month} {moment.year}"


def format_short_date(moment: datetime, locale: str) -> str:
    """``Tue 1 Dec`` / ``mar 1 dic``: for SMS, where every character counts."""
    lang = locale if locale in FORMAT_LOCALES else "en"
    weekday = _SHORT_WEEKDAYS[lang][moment.weekday()]
    return f"{weekday} {moment.day} {_SHORT_MONTHS[lang][moment.month - 1]}"


def format_time(moment: datetime) -> str:
    """``15:30 CET``: a 24-hour clock reads the same in both languages."""
    return f"{moment.hour:02d}:{moment.minute:02d} {zone_label(moment)}"


def format_time_range(start: datetime, end: datetime | None) -> str:
    """``17:48–18:33 CET``: the zone once, after the end (``17:48 CET`` without an end).

    When the end is in another zone offset (a daylight-saving change in between), each
    time keeps its own zone: ``01:30 CEST–02:15 CET``.
    """
    if end is None:
        return format_time(start)
    if zone_label(start) != zone_label(end):
        return f"{format_time(start)}–{format_time(end)}"
    return f"{start.hour:02d}:{start.minute:02d}–{format_time(end)}"


_DEFAULT_BRAND = "#2563eb"
_COLOUR = re.compile(r"^#[0-9A-Fa-f]{6}$")


def brand_color(value: object) -> str:
    """The shop's accent colour if it is ``#rrggbb``, else the shipped blue.

    The database checks the column too; this is what keeps a value from any other source
    (a shop template's context, an older row) out of an HTML ``style`` attribute.
    """
    return value.lower() if isinstance(value, str) and _COLOUR.match(value) else _DEFAULT_BRAND


@lru_cache(maxsize=1024)
def text_color_on(background: str) -> str:
    """White or near-black, whichever contrasts more with ``background`` (``#rrggbb``).

    WCAG's relative luminance: a shop may pick a light accent (a yellow), and white text on
    it would be unreadable in the header and on the buttons. Cached: every message's
    context asks, and shops have few colours (it was 3 % of an in-app message's CPU).
    """

    def channel(hex_pair: str) -> float:
        c = int(hex_pair, 16) / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(background[i : i + 2]) for i in (1, 3, 5))
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    # Contrast with white (1.05 / (L + 0.05)) against with #18181b (L about 0.0097).
    return "#ffffff" if 1.05 / (luminance + 0.05) >= (luminance + 0.05) / 0.0597 else "#18181b"


def logo_url(value: object) -> str:
    """The shop's logo URL if it is a plain ``https://`` URL, else ``""`` (no image).

    https only: an ``http`` image is blocked or flagged by mail clients, and anything else
    (``javascript:``, ``data:``) has no place in ``src``.
    """
    if not isinstance(value, str) or len(value) > 2000 or not value.startswith("https://"):
        return ""
    if any(c.isspace() or c in "\"'<>" for c in value) or len(value) <= len("https://"):
        return ""
    return value


def format_money(cents: int | None, currency: str | None, locale: str) -> str:
    """Format an amount of minor units: ``$45.00``, ``€1,234.50``; ``es``: ``45,00 €``."""
    if cents is None:
        return ""
    code = (currency or "USD").upper()
    exponent = _EXPONENTS.get(code, 2)
    sign = "-" if cents < 0 else ""
    units, minor = divmod(abs(int(cents)), 10**exponent)
    whole = f"{units:,}"
    fraction = f"{minor:0{exponent}d}" if exponent else ""
    symbol = _SYMBOLS.get(code)
    if locale == "es":
        number = whole.replace(",", ".") + ("," + fraction if fraction else "")
        return f"{sign}{number} {symbol or code}"
    number = whole + ("." + fraction if fraction else "")
    return f"{sign}{symbol}{number}" if symbol else f"{sign}{number} {code}"


def format_duration(minutes: int | None) -> str:
    """``45 min``, ``1 h``, ``1 h 30 min``: the same abbreviations serve en and es."""
    if minutes is None:
        return ""
    hours, mins = divmod(max(int(minutes), 0), 60)
    if hours and mins:
        return f"{hours} h {mins} min"
    if hours:
        return f"{hours} h"
    return f"{mins} min"


def format_totals(totals: Any, locale: str, *, first: str | None = None) -> str:
    """A sum per currency (``{"EUR": 2500}``, as SQL adds payments up), as people read it.

    ``€25.00``; several currencies are joined, ``first`` (the booking's) leading and the
    others in code order: ``€25.00 + $10.00``. Zero amounts and anything that is not a
    currency code with whole cents are left out; with nothing left the answer is ``""``.
    """
    if not isinstance(totals, Mapping):
        return ""
    amounts = {
        str(code).upper(): cents
        for code, cents in totals.items()
        if isinstance(cents, int) and not isinstance(cents, bool) and cents
    }
    order = sorted(amounts, key=lambda code: (code != (first or "").upper(), code))
    return " + ".join(format_money(amounts[code], code, locale) for code in order)


def format_moment(value: str | None, zone: tzinfo, locale: str) -> str:
    """``Tuesday, 1 December 2026, 15:30 CET`` in ``zone``; ``""`` when it cannot be shown.

    For times that are not the booking's (a payment's), so nothing upstream has checked
    them: infinite or out-of-range ones are shown as nothing rather than failing the message.
    """
    moment = parse_timestamp(value)
    if moment is None:
        return ""
    try:
        local = moment.astimezone(zone)
    except (OverflowError, ValueError):
        return ""
    return f"{format_date(local, locale)}, {format_time(local)}"


_MAPS = "https://www.google.com/maps/search/?api=1&query="
_NO_LINKS = {"manage_url": "", "pay_url": ""}


def _section(raw: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = raw.get(name)
    return dict(value) if isinstance(value, Mapping) else {}


def build_context(
    raw: Mapping[str, Any],
    *,
    locale: str | None = None,
    audience: str = "customer",
    links: LinkSigner | None = None,
) -> dict[str, Any]:
    """Turn the raw sections loaded by SQL into the dict every template renders from.

    Keys: the raw sections ``booking``, ``shop``, ``staff``, ``service``, ``customer``,
    ``payment`` (``payment`` may be ``None``), and ``locale``, ``timezone``, ``date``,
    ``short_date``, ``time``, ``end_time``, ``duration``, ``price``, ``amount`` (the
    payment's), ``starts_at`` / ``ends_at`` (aware datetimes in the shop's zone, or
    ``None``), ``reference`` (``pgnotify.booking_reference``, computed by SQL), ``paid`` and
    ``refunded`` (the booking's succeeded and refunded payments, each ``""`` when zero: a
    payment changed to ``refunded`` no longer counts as succeeded, and "paid 0.00" beside
    its refund would tell the customer they never paid), ``payment_date`` (when the payment reached
    its status, in the shop's zone), ``customer_confirmed`` (the customer replied C: set
    ``booking.customer_confirmed_at``), ``time_range`` (``17:48–18:33 CET``, the zone once),
    ``previous_date`` / ``previous_time_range`` (the start before the booking's last move,
    for a reschedule; ``""`` when it never moved), ``brand_color`` (the shop's ``#rrggbb``
    or the default) and ``brand_text_color`` (white or black, whichever reads on it),
    ``logo_url`` (the shop's https logo or ``""``), ``maps_url`` (a map search for the
    shop's address, or ``""``), ``tel_url`` (``tel:`` and the shop's E.164 phone, or
    ``""``), ``manage_url`` and ``pay_url`` (signed links when ``links`` is given, else
    ``""``). ``locale`` overrides the customer's and the shop's language (previews). A
    message to the shop (``audience="shop"``, the shop's alerts) is in the shop's
    language, whatever the customer's.
    """
    booking = _section(raw, "booking")
    shop = _section(raw, "shop")
    customer = _section(raw, "customer")
    service = _section(raw, "service")
    payment_raw = raw.get("payment")
    payment = dict(payment_raw) if isinstance(payment_raw, Mapping) else None

    reader = None if audience == "shop" else customer.get("locale")
    lang = resolve_locale(locale, reader, shop.get("locale"))
    zone = shop_zone(shop.get("timezone"))
    starts = parse_timestamp(booking.get("starts_at"))
    duration_minutes = booking.get("duration_minutes", service.get("duration_minutes"))
    ends = parse_timestamp(booking.get("ends_at"))
    if ends is None and starts is not None and isinstance(duration_minutes, int):
        ends = starts + timedelta(minutes=duration_minutes)
    local_start = starts.astimezone(zone) if starts else None
    local_end = ends.astimezone(zone) if ends else None

    total = booking.get("total_cents", service.get("price_cents"))
    currency = booking.get("currency") or service.get("currency")
    reference = booking.get("reference")
    previous = parse_timestamp(booking.get("previous_starts_at"))
    local_previous: datetime | None = None
    previous_end: datetime | None = None
    if previous is not None and isinstance(duration_minutes, int):
        try:
            local_previous = previous.astimezone(zone)
            previous_end = (previous + timedelta(minutes=duration_minutes)).astimezone(zone)
        except (OverflowError, ValueError):
            local_previous = None
    phone, address = shop.get("phone"), shop.get("address")
    accent = brand_color(shop.get("brand_color"))
    urls = links.urls(booking.get("id")) if links is not None else _NO_LINKS
    return {
        "booking": booking,
        "shop": shop,
        "staff": _section(raw, "staff"),
        "service": service,
        "customer": customer,
        "payment": payment,
        "locale": lang,
        "timezone": getattr(zone, "key", "UTC"),
        "starts_at": local_start,
        "ends_at": local_end,
        "date": format_date(local_start, lang) if local_start else "",
        "short_date": format_short_date(local_start, lang) if local_start else "",
        "time": format_time(local_start) if local_start else "",
        "end_time": format_time(local_end) if local_end else "",
        "time_range": format_time_range(local_start, local_end) if local_start else "",
        "previous_date": format_date(local_previous, lang) if local_previous else "",
        "previous_time_range": (
            format_time_range(local_previous, previous_end) if local_previous else ""
        ),
        "brand_color": accent,
        "brand_text_color": text_color_on(accent),
        "logo_url": logo_url(shop.get("logo_url")),
        "maps_url": (
            _MAPS + quote(address, safe="") if isinstance(address, str) and address else ""
        ),
        "tel_url": f"tel:{phone}" if isinstance(phone, str) and is_e164(phone) else "",
        "manage_url": urls["manage_url"],
        "pay_url": urls["pay_url"],
        "duration": format_duration(duration_minutes),
        "price": format_money(total, currency, lang),
        "amount": (
            format_money(payment.get("amount_cents"), payment.get("currency"), lang)
            if payment
            else ""
        ),
        "reference": reference if isinstance(reference, str) else "",
        "paid": format_totals(booking.get("paid"), lang, first=currency),
        "refunded": format_totals(booking.get("refunded"), lang, first=currency),
        "payment_date": format_moment(payment.get("updated_at"), zone, lang) if payment else "",
        "customer_confirmed": bool(booking.get("customer_confirmed_at")),
    }
