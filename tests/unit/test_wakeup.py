"""The doorbell between the listener, the scheduler and the workers never loses a ring."""

from __future__ import annotations

import asyncio

from pgnotify.wakeup import Doorbell, wait_event


async def test_a_ring_between_token_and_wait_is_not_lost() -> None:
    bell = Doorbell()
    token = bell.token()  # taken before looking for work...
    bell.ring()  # ...work arrives while looking...
    assert await wait_event(token, 10.0) is True  # ...so the wait returns at once


async def test_a_wait_without_a_ring_times_out() -> None:
    assert await wait_event(Doorbell().token(), 0.01) is False


async def test_one_ring_wakes_every_waiter() -> None:
    bell = Doorbell()
    token = bell.token()
    waiters = [asyncio.create_task(wait_event(token, 10.0)) for _ in range(3)]
    await asyncio.sleep(0)
    bell.ring()
    assert await asyncio.gather(*waiters) == [True, True, True]


async def test_a_token_taken_after_a_ring_waits_for_the_next_one() -> None:
    bell = Doorbell()
    bell.ring()
    token = bell.token()
    assert await wait_event(token, 0.01) is False
    bell.ring()
    assert await wait_event(token, 0.01) is True
