"""pytest fixtures for the network peers (registered by ``tests/conftest.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import trustme

from tests.peers.smtp import SmtpPeer
from tests.peers.twilio import TwilioPeer

SMTP_USER = "mailer"
SMTP_PASSWORD = "s3cret-pass"


@pytest.fixture(scope="session")
def test_ca() -> trustme.CA:
    """One private certificate authority for every TLS peer of the session."""
    return trustme.CA()


@pytest.fixture
def smtp_server() -> Iterator[SmtpPeer]:
    """Plain SMTP (no TLS, no AUTH) on 127.0.0.1: for ``SMTP_SECURITY=none``."""
    peer = SmtpPeer().start()
    yield peer
    peer.stop()


@pytest.fixture
def smtp_server_tls(test_ca: trustme.CA) -> Iterator[SmtpPeer]:
    """SMTP requiring STARTTLS (trustme certificate) and AUTH (``SMTP_USER``)."""
    peer = SmtpPeer(tls="starttls", auth=(SMTP_USER, SMTP_PASSWORD), ca=test_ca).start()
    yield peer
    peer.stop()


@pytest.fixture
def smtp_server_implicit_tls(test_ca: trustme.CA) -> Iterator[SmtpPeer]:
    """SMTP over implicit TLS (port-465 style) with AUTH."""
    peer = SmtpPeer(tls="implicit", auth=(SMTP_USER, SMTP_PASSWORD), ca=test_ca).start()
    yield peer
    peer.stop()


@pytest.fixture
def twilio_server() -> Iterator[TwilioPeer]:
    """The Twilio-shaped REST server; point ``TWILIO_API_URL`` at ``.base_url``."""
    peer = TwilioPeer().start()
    yield peer
    peer.stop()
