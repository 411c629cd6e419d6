"""What the daemon's loops share once it is connected, in one place the health socket reads.

``Shared`` exists from the start (the health socket and signal handlers need it before
the database answers); ``Runtime`` is built once the pool is connected, so no loop ever
meets a missing pool.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import asyncpg

from pgnotify.channels.base import Channel
from pgnotify.compose import Composer
from pgnotify.pauses import ChannelPauses
from pgnotify.settings import Settings
from pgnotify.wakeup import Doorbell


@dataclass
class Stats:
    in_flight: int = 0
    sent: int = 0
    retried: int = 0
    failed: int = 0
    skipped: int = 0
    last_claim_at: float | None = None
    # When a claim last found work (the adaptive poll's signal when NOTIFY is off).
    last_work_at: float | None = None
    # The database answered when a loop last found out (health: pool_connected).
    db_ok: bool = False


@dataclass
class Shared:
    """State that outlives connections: counters, pauses, doorbells, the stop request."""

    stats: Stats = field(default_factory=Stats)
    pauses: ChannelPauses = field(default_factory=ChannelPauses)
    # Rung by the scheduler when workers should look for due rows.
    work: Doorbell = field(default_factory=Doorbell)
    # Rung by the listener (NOTIFY), and at a stop, when the schedule may have changed.
    changed: Doorbell = field(default_factory=Doorbell)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    # Rows whose outcome is decided but not yet recorded (the database is away): the
    # lease rescuer must not hand them to another attempt.
    unrecorded: set[int] = field(default_factory=set)
    # Batches whose outcomes are being settled and recorded (their claimed ids): shutdown
    # waits for them, and never releases their rows, so a sent message is not sent again.
    finishing: dict[asyncio.Future[None], list[int]] = field(default_factory=dict)


@dataclass
class Runtime:
    """Everything a loop of a connected daemon needs."""

    settings: Settings
    daemon_id: str
    pool: asyncpg.Pool
    composer: Composer
    channels: dict[str, Channel]
    shared: Shared

    @property
    def stats(self) -> Stats:
        return self.shared.stats

    @property
    def pauses(self) -> ChannelPauses:
        return self.shared.pauses

    @property
    def work(self) -> Doorbell:
        return self.shared.work

    @property
    def changed(self) -> Doorbell:
        return self.shared.changed

    @property
    def stopping(self) -> asyncio.Event:
        return self.shared.stopping

    @property
    def unrecorded(self) -> set[int]:
        return self.shared.unrecorded
