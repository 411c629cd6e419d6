"""Shop templates render in worker processes, under a time and a memory budget.

These drive the real pool (real ``python -m pgnotify.render_pool`` processes) through the
composer, as the daemon does; ``tests/daemon/test_shop_templates_budget.py`` runs the same
bombs through a whole daemon.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pgnotify.channels.base import EmailMessage, InappMessage, SmsMessage
from pgnotify.compose import Composer
from pgnotify.context import build_context
from pgnotify.errors import PermanentError, SettingsError
from pgnotify.settings import load_settings
from pgnotify.templates import TemplateRenderer
from tests.samples import SHOP_ID, claimed, raw

SHIPPED = TemplateRenderer().roots[0]
# 10^10 loop iterations: hours of CPU, whatever the machine.
CPU_BOMB = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}x"
# 400 MB in one string: over a 256 MB budget, harmless to a test process that has it.
MEMORY_BOMB = "{{ ('x' * 400000000)|length }}"
PHONE = "+34600111222"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _shop_file(root: Path, relative: str, text: str) -> Path:
    path = root / "shops" / SHOP_ID / "en" / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def make_composer(tmp_path: Path) -> Iterator[Callable[..., Composer]]:
    """Composers over ``tmp_path`` (a shop's folder) and the shipped templates, closed after."""
    made: list[Composer] = []

    def make(**settings: object) -> Composer:
        composer = Composer(load_settings(**settings), TemplateRenderer([tmp_path, SHIPPED]))
        made.append(composer)
        return composer

    yield make
    for composer in made:
        composer.close()


def test_a_render_over_its_time_fails_permanently_naming_the_file(
    tmp_path: Path, make_composer: Any
) -> None:
    """A CPU bomb fails its notification after the timeout, naming its file; the shop's
    other templates go on rendering."""
    bomb = _shop_file(tmp_path, "booking_confirmed/sms.txt", CPU_BOMB)
    _shop_file(tmp_path, "booking_confirmed/inapp_title.txt", "Hello from the shop")
    composer = make_composer(NOTIFICATION_RENDER_TIMEOUT=1)
    started = time.monotonic()
    with pytest.raises(PermanentError) as failed:
        composer.compose(claimed("booking_confirmed", "sms", recipient=PHONE))
    assert time.monotonic() - started < 30  # 1 s of budget, plus a worker start on a busy box
    assert str(bomb) in str(failed.value)
    assert "took longer than 1s (NOTIFICATION_RENDER_TIMEOUT)" in str(failed.value)
    inapp = composer.compose(claimed("booking_confirmed", "inapp", recipient="user"))
    assert isinstance(inapp, InappMessage) and inapp.title == "Hello from the shop"


def test_the_worker_that_ran_over_is_killed_and_replaced(tmp_path: Path) -> None:
    """One worker: its process is gone after the timeout, and a new one serves the next render."""
    _shop_file(tmp_path, "booking_confirmed/sms.txt", CPU_BOMB)
    _shop_file(tmp_path, "booking_confirmed/inapp_title.txt", "Hello from the shop")
    from pgnotify.render_pool import RenderPool  # here: the rest of the file runs without it

    renderer = TemplateRenderer([tmp_path, SHIPPED])
    pool = RenderPool(renderer.roots, timeout=0.5, memory_mb=256, size=1)
    ctx = build_context(raw())

    def render(part: str) -> str:
        source = renderer.shop_source("booking_confirmed", part, shop_id=SHOP_ID)
        assert source is not None
        return pool.render_blocking(
            source, "booking_confirmed", part, ctx, locale="en", shop_id=SHOP_ID
        )

    try:
        assert render("inapp_title.txt") == "Hello from the shop"
        (first,) = pool.pids
        with pytest.raises(PermanentError, match="NOTIFICATION_RENDER_TIMEOUT"):
            render("sms.txt")
        assert not _alive(first), "the worker that ran over was killed (and reaped)"
        assert pool.pids == frozenset()
        assert render("inapp_title.txt") == "Hello from the shop"
        (second,) = pool.pids
        assert second != first
    finally:
        pool.close()
    assert not _alive(second), "close() stops the workers"


@pytest.mark.parametrize("memory_mb", [128, 256])
def test_a_render_over_its_memory_fails_permanently_naming_the_file(
    tmp_path: Path, make_composer: Any, memory_mb: int
) -> None:
    """400 MB in a template is refused under the address-space limit; the worker is replaced."""
    bomb = _shop_file(tmp_path, "booking_confirmed/email_subject.txt", MEMORY_BOMB)
    composer = make_composer(
        NOTIFICATION_RENDER_MEMORY_MB=memory_mb, NOTIFICATION_RENDER_TIMEOUT=20
    )
    with pytest.raises(PermanentError) as failed:
        composer.compose(claimed("booking_confirmed", "email"))
    assert str(bomb) in str(failed.value)
    assert f"more than {memory_mb} MB (NOTIFICATION_RENDER_MEMORY_MB)" in str(failed.value)
    assert composer.pool.pids == frozenset(), "the worker that ran out quit and was reaped"


def test_the_memory_limit_is_the_setting(tmp_path: Path, make_composer: Any) -> None:
    """The same 400 MB template renders under a 1 GB budget: the limit is what was set."""
    _shop_file(tmp_path, "booking_confirmed/email_subject.txt", MEMORY_BOMB)
    composer = make_composer(NOTIFICATION_RENDER_MEMORY_MB=1024, NOTIFICATION_RENDER_TIMEOUT=20)
    email = composer.compose(claimed("booking_confirmed", "email"))
    assert isinstance(email, EmailMessage) and email.subject == "400000000"
    assert composer.pool.pids, "it rendered in a worker process"


async def test_the_event_loop_runs_while_a_shop_template_renders(
    tmp_path: Path, make_composer: Any
) -> None:
    """``acompose_batch`` awaits the pool: a ticker on the same loop keeps ticking through a
    2 s bomb, and the batch's other rows come back composed."""
    _shop_file(tmp_path, "booking_confirmed/sms.txt", CPU_BOMB)
    composer = make_composer(NOTIFICATION_RENDER_TIMEOUT=2)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.05)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        started = time.monotonic()
        out = await composer.acompose_batch(
            [
                claimed("booking_confirmed", "email", id=1),
                claimed("booking_confirmed", "sms", id=2, recipient=PHONE),
                claimed("booking_confirmed", "inapp", id=3, recipient="user"),
            ]
        )
        elapsed = time.monotonic() - started
    finally:
        ticker.cancel()
    assert isinstance(out[0], EmailMessage) and isinstance(out[2], InappMessage)
    assert isinstance(out[1], PermanentError) and "NOTIFICATION_RENDER_TIMEOUT" in str(out[1])
    assert elapsed >= 2
    # A 50 ms ticker over >= 2 s: a frozen loop would have ticked about once.
    assert ticks >= 10, f"{ticks} ticks in {elapsed:.1f}s"


def test_only_parts_that_read_a_shop_file_leave_the_process(tmp_path: Path) -> None:
    """A shop's layout makes its emails' bodies budgeted (they extend it), not its subjects;
    a shop that customised only its SMS renders its emails inline."""
    layout = _shop_file(tmp_path, "layout.html", "<html>{% block heading %}{% endblock %}</html>")
    renderer = TemplateRenderer([tmp_path, SHIPPED])
    source = renderer.shop_source("booking_confirmed", "email.html", shop_id=SHOP_ID)
    assert source is not None and source.files == (str(layout),)
    for part in ("email_subject.txt", "email.txt", "sms.txt"):
        assert renderer.shop_source("booking_confirmed", part, shop_id=SHOP_ID) is None
    assert renderer.shop_source("booking_confirmed", "email.html", shop_id=None) is None
    other = "00000000-0000-0000-0000-000000000000"
    assert renderer.shop_source("booking_confirmed", "email.html", shop_id=other) is None


def test_a_shop_cannot_mutate_what_it_is_given(tmp_path: Path, make_composer: Any) -> None:
    """Shop templates run in ``ImmutableSandboxedEnvironment``: ``list.append`` is refused."""
    _shop_file(tmp_path, "booking_confirmed/sms.txt", "{{ [1].append(2) }}{{ time }}")
    composer = make_composer()
    with pytest.raises(PermanentError, match="unsafe"):
        composer.compose(claimed("booking_confirmed", "sms", recipient=PHONE))


def test_a_shop_sms_renders_in_the_pool_with_the_sms_rules(
    tmp_path: Path, make_composer: Any
) -> None:
    """What comes back from the pool is composed like inline text (GSM-7 folding)."""
    _shop_file(tmp_path, "booking_confirmed/sms.txt", "Confirmada: {{ time }} — está")
    composer = make_composer()
    sms = composer.compose(claimed("booking_confirmed", "sms", recipient=PHONE))
    assert isinstance(sms, SmsMessage) and sms.body == "Confirmada: 15:30 CET - esta"
    assert composer.pool.pids


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("NOTIFICATION_RENDER_TIMEOUT", "inf"),
        ("NOTIFICATION_RENDER_TIMEOUT", "nan"),
        ("NOTIFICATION_RENDER_TIMEOUT", "0"),
        ("NOTIFICATION_RENDER_TIMEOUT", "-1"),
        ("NOTIFICATION_RENDER_MEMORY_MB", "0"),
        ("NOTIFICATION_RENDER_MEMORY_MB", "16"),
        ("NOTIFICATION_RENDER_MEMORY_MB", "lots"),
    ],
)
def test_a_budget_that_cannot_work_is_refused_naming_it(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        load_settings(**{name: value})


def test_the_budget_defaults_to_two_seconds_and_256_mb() -> None:
    settings = load_settings()
    assert settings.NOTIFICATION_RENDER_TIMEOUT == 2
    assert settings.NOTIFICATION_RENDER_MEMORY_MB == 256
