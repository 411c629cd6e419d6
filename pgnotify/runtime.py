"""The state the daemon's loops share, in one place the health socket can read."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import asyncpg

from pgnotify.channels.base import Channel
from pgnotify.channels.inapp import InappChannel
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
    last_db_ok_at: float | None = None
    db_ok: bool = False


@dataclass
class Runtime:
    settings: Settings
    daemon_id: str
    composer: Composer
    channels: dict[str, Channel]
    inapp: InappChannel = field(default_factory=InappChannel)
    pool: asyncpg.Pool | None = None
    pauses: ChannelPauses = field(default_factory=ChannelPauses)
    stats: Stats = field(default_factory=Stats)
    # Rung by the scheduler when workers should look for due rows.
    work: Doorbell = field(default_factory=Doorbell)
    # Rung by the listener (NOTIFY) and by workers when the schedule may have changed.
    changed: Doorbell = field(default_factory=Doorbell)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    # Rows whose outcome is decided but not yet recorded (the database is away): the
    # lease rescuer must not hand them to another attempt.
    unrecorded: set[int] = field(default_factory=set)

    def db_ok(self) -> None:
        self.stats.db_ok = True
        self.stats.last_db_ok_at = time.time()

    def db_failed(self) -> None:
        self.stats.db_ok = False
