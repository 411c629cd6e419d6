"""Screenshots of every email kind as a customer's phone and desktop show it.

``make screenshots`` (not part of ``make test``): renders the HTML part of every kind that
has an email template, in every shipped language, from the sample booking of
``tests/samples.py`` with signed links on, and has headless Chromium photograph each at
390 px (a phone) and 900 px (a desktop client) wide, into
``build/screenshots/<locale>/<kind>-<width>.png``. One extra pair per language shows a
branded shop (accent colour and a logo that cannot load, so its alt text shows), and one
a shop with a light accent colour. The paths are printed; looking at them is the point.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from pgnotify.channels.base import EmailMessage
from pgnotify.compose import Composer
from pgnotify.settings import load_settings
from pgnotify.templates import TemplateRenderer
from tests.samples import claimed, raw

WIDTHS = (390, 900)
HEIGHT = 1400
BRANDED = {"brand_color": "#0f766e", "logo_url": "https://cdn.studionine.example/logo.png"}


def sample(kind: str, locale: str, **shop: Any) -> dict[str, Any]:
    """The sample booking, with what each kind is about (a failed or refunded payment, a
    cancellation with money paid and refunded, a move from the day before)."""
    booking: dict[str, Any] = {
        "reference": "N4LGV3MM",
        "previous_starts_at": "2026-11-30T16:48:00+00:00",
    }
    payment: dict[str, Any] = {"updated_at": "2026-11-20T10:05:00+00:00"}
    if kind == "payment_failed":
        payment.update(status="failed", failure_reason="Your card was declined")
    elif kind == "payment_refunded":
        payment.update(status="refunded", amount_cents=1000)
    elif kind == "booking_cancelled":
        booking.update(
            status="cancelled",
            cancellation_reason="The stylist is unwell",
            paid={"EUR": 4500},
            refunded={"EUR": 4500},
        )
    return raw(booking=booking, payment=payment, customer={"locale": locale}, shop=shop)


def email_kinds(renderer: TemplateRenderer) -> list[str]:
    """Every kind with an email template in the default language."""
    return [k for k in renderer.kinds if (renderer.roots[-1] / "en" / k / "email.html").exists()]


def shoot(chromium: str, html: Path, png: Path, width: int) -> None:
    """One headless screenshot of ``html`` at ``width`` px."""
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--window-size={width},{HEIGHT}",
            f"--screenshot={png}",
            html.resolve().as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("build/screenshots"))
    parser.add_argument("--kind", action="append", help="only these kinds (repeatable)")
    args = parser.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("screenshots: chromium not found (make screenshots installs it)", file=sys.stderr)
        return 2
    settings = load_settings(
        _env_file=None,
        FROM_EMAIL="bookings@studionine.example",
        NOTIFICATION_LINK_BASE_URL="https://book.studionine.example",
        NOTIFICATION_LINK_SECRET="screenshots",
    )
    renderer = TemplateRenderer()
    composer = Composer(settings, renderer)
    shots: list[tuple[str, str, dict[str, Any]]] = [
        (kind, kind, {}) for kind in args.kind or email_kinds(renderer)
    ]
    shots.append(("booking_confirmed", "booking_confirmed-branded", BRANDED))
    shots.append(("payment_failed", "payment_failed-light-brand", {"brand_color": "#facc15"}))
    try:
        for locale in sorted(renderer.locales):
            folder = args.out / locale
            folder.mkdir(parents=True, exist_ok=True)
            for kind, name, shop in shots:
                message = composer.compose(
                    claimed(kind, "email", context=sample(kind, locale, **shop))
                )
                assert isinstance(message, EmailMessage)
                html = folder / f"{name}.html"
                html.write_text(message.html, encoding="utf-8")
                for width in WIDTHS:
                    png = folder / f"{name}-{width}.png"
                    shoot(chromium, html, png, width)
                    print(png)
    finally:
        composer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
