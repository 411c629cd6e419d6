"""sd_notify over ``$NOTIFY_SOCKET`` with the standard library (no new dependency)."""

from __future__ import annotations

import os
import socket


class SystemdNotifier:
    """Sends READY/WATCHDOG/STATUS/STOPPING datagrams; a no-op outside systemd."""

    def __init__(self) -> None:
        self._address: str | None = os.environ.get("NOTIFY_SOCKET") or None
        if self._address and self._address.startswith("@"):
            self._address = "\0" + self._address[1:]  # abstract namespace
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        self.watchdog_interval: float | None = None
        if usec.isdigit() and (not pid or pid == str(os.getpid())):
            # Ping at half the deadline, as sd_watchdog_enabled(3) recommends.
            self.watchdog_interval = int(usec) / 2_000_000

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *lines: str) -> bool:
        """Send ``KEY=value`` lines; returns False when not under systemd or on error."""
        if not self._address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto("\n".join(lines).encode(), self._address)
            return True
        except OSError:
            return False

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def stopping(self) -> None:
        self.notify("STOPPING=1", "STATUS=stopping")
