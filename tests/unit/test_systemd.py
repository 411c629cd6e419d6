"""sd_notify over a real AF_UNIX datagram socket, as systemd would receive it."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgnotify.systemd import SystemdNotifier


@pytest.fixture
def systemd_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket bound where ``$NOTIFY_SOCKET`` points (a short path: 108 bytes max)."""
    directory = Path(tempfile.mkdtemp(prefix="sd-"))
    path = directory / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield sock
    sock.close()
    path.unlink(missing_ok=True)
    directory.rmdir()


def received(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_ready_status_watchdog_and_stopping_reach_the_socket(
    systemd_socket: socket.socket,
) -> None:
    notifier = SystemdNotifier()
    assert notifier.enabled
    notifier.ready("delivering with 3 workers")
    assert received(systemd_socket) == ["READY=1", "STATUS=delivering with 3 workers"]
    notifier.status("waiting for the database")
    assert received(systemd_socket) == ["STATUS=waiting for the database"]
    notifier.watchdog()
    assert received(systemd_socket) == ["WATCHDOG=1"]
    notifier.stopping()
    assert received(systemd_socket) == ["STOPPING=1", "STATUS=stopping"]


def test_an_abstract_socket_name_is_supported(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"pgnotify-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert SystemdNotifier().notify("READY=1") is True
        assert received(sock) == ["READY=1"]


def test_outside_systemd_every_call_is_a_harmless_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = SystemdNotifier()
    assert not notifier.enabled
    assert notifier.notify("READY=1") is False
    notifier.ready("x")
    notifier.stopping()


def test_a_socket_that_went_away_is_reported_not_raised(
    systemd_socket: socket.socket,
) -> None:
    notifier = SystemdNotifier()
    Path(os.environ["NOTIFY_SOCKET"]).unlink()
    assert notifier.notify("WATCHDOG=1") is False


def test_the_watchdog_pings_at_half_the_deadline(
    systemd_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert SystemdNotifier().watchdog_interval == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert SystemdNotifier().watchdog_interval == 15.0


def test_a_watchdog_meant_for_another_process_is_ignored(
    systemd_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert SystemdNotifier().watchdog_interval is None
    monkeypatch.setenv("WATCHDOG_USEC", "not-a-number")
    monkeypatch.delenv("WATCHDOG_PID")
    assert SystemdNotifier().watchdog_interval is None
