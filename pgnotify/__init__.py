"""pgnotify: booking notifications owned by Postgres, delivered by one asyncio daemon."""

__version__ = "0.1.0"
