"""In-app rows, from composed messages to ``FINISH_INAPP``'s arguments: pure."""

from __future__ import annotations

from pgnotify.channels.base import InappMessage, Receipt, SmsMessage
from pgnotify.errors import PermanentError, SkipNotification
from pgnotify.inbox import finish_args
from pgnotify.outcome import Outcome
from pgnotify.worker import inapp_results
from tests.samples import BOOKING_ID, claimed

USER = "6b1f7a0e-1c1e-4a43-9d0e-0a1b2c3d4e5f"


def test_a_composed_message_is_delivered_and_an_error_stays_that_rows_alone() -> None:
    ok, broken, stale = (claimed(channel="inapp", id=i, recipient=USER) for i in (1, 2, 3))
    message = InappMessage(1, "Booked", "See you")
    error = PermanentError("template booking_confirmed/inapp_title.txt: syntax error")
    skip = SkipNotification("booking no longer exists")

    results, messages = inapp_results([ok, broken, stale], [message, error, skip])

    assert results == {1: Receipt(None), 2: error, 3: skip}
    assert messages == {1: message}


def test_a_row_composed_for_another_channel_fails_instead_of_reaching_the_inbox() -> None:
    row = claimed(channel="inapp", id=4, recipient=USER)
    results, messages = inapp_results([row], [SmsMessage(4, "+34600111222", "hi")])
    assert isinstance(results[4], PermanentError) and messages == {}


def test_only_a_sent_outcome_carries_its_message_into_the_inbox() -> None:
    sent, failed = (claimed(channel="inapp", id=i, recipient=USER) for i in (1, 2))
    outcomes = [Outcome(1, "sent"), Outcome(2, "failed", last_error="syntax error")]
    messages = {1: InappMessage(1, "Booked", "See you"), 2: InappMessage(2, "unused", "x")}

    args = finish_args([sent, failed], outcomes, messages, "daemon-a")

    ids, statuses, delays, errors, titles, bodies, data, customers, recipients, releases = args[:10]
    assert (ids, statuses, errors) == ([1, 2], ["sent", "failed"], [None, "syntax error"])
    assert (delays, releases) == ([None, None], [False, False])
    assert (titles, bodies) == (["Booked", None], ["See you", None])
    assert data == [
        {"booking_id": BOOKING_ID, "payment_id": None, "kind": "booking_confirmed"},
        None,
    ]
    assert customers == [None, None] and recipients == [USER, USER]
    assert args[10] == "daemon-a"
