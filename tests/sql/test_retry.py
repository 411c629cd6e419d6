"""`pgnotify.retry(id)`: an operator puts a failed or skipped row back, due now, and the
recipient is looked up again, so fixing a customer's contact and retrying works."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.factories import claim, daemon_connection, lone_notification

Conn = psycopg.Connection[Any]


def retry(db: Conn, nid: int) -> bool:
    row = db.execute("select pgnotify.retry(%s)", (nid,)).fetchone()
    assert row is not None
    return bool(row[0])


def row_of(db: Conn, nid: int) -> dict[str, Any]:
    with db.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(
            "select status, recipient, attempts, last_error, claimed_by, lease_until,"
            " run_at <= now() as due from pgnotify.notifications where id = %s",
            (nid,),
        )
        row = cur.fetchone()
    assert row is not None
    return row


@pytest.mark.parametrize(
    ("channel", "missing", "column", "fixed", "reason"),
    [
        ("email", {"email": None}, "email", "ana.new@example.com", "customer has no email address"),
        ("sms", {"phone": None}, "phone", "+34600999888", "customer has no phone number"),
    ],
)
async def test_retrying_a_skipped_row_looks_the_recipient_up_again(
    db: Conn,
    clean_db: str,
    channel: str,
    missing: dict[str, Any],
    column: str,
    fixed: str,
    reason: str,
) -> None:
    """Skipped for want of a contact; the customer gets one; retry: the row is pending, due
    now, with a fresh attempt budget, and the claim hands the daemon the new address."""
    nid = lone_notification(db, channel=channel, **missing)
    skipped = row_of(db, nid)
    assert (skipped["status"], skipped["recipient"], skipped["last_error"]) == (
        "skipped",
        None,
        reason,
    )
    db.execute(f"update booking.customers set {column} = %s", (fixed,))

    assert retry(db, nid) is True

    requeued = row_of(db, nid)
    assert (requeued["status"], requeued["attempts"], requeued["due"]) == ("pending", 0, True)
    assert requeued["last_error"] == f"retried by operator; was: {reason}"
    async with daemon_connection(clean_db) as conn:
        (claimed,) = await claim(conn, "daemon-a")
    assert (claimed["id"], claimed["recipient"], claimed["attempts"]) == (nid, fixed, 1)


async def test_retrying_a_failed_row_sends_to_the_customers_current_address(
    db: Conn, clean_db: str
) -> None:
    """A dead letter after a bounce; the operator fixes the address and retries."""
    nid = lone_notification(db, email="ana@typo.example")
    db.execute(
        "update pgnotify.notifications set status = 'failed', attempts = 4,"
        " last_error = '550 no such user' where id = %s",
        (nid,),
    )
    db.execute("update booking.customers set email = 'ana@example.com'")

    assert retry(db, nid) is True

    async with daemon_connection(clean_db) as conn:
        (claimed,) = await claim(conn, "daemon-a")
    assert (claimed["id"], claimed["recipient"], claimed["attempts"]) == (
        nid,
        "ana@example.com",
        1,
    )
    assert row_of(db, nid)["last_error"] == "retried by operator; was: 550 no such user"


@pytest.mark.parametrize("status", ["pending", "sending", "sent", "cancelled"])
def test_retry_leaves_rows_that_are_not_failed_or_skipped_alone(db: Conn, status: str) -> None:
    """Only dead letters and skipped rows go back: retrying a queued, in-flight, delivered
    or cancelled row returns false and changes nothing (no second send, no stolen lease)."""
    nid = lone_notification(db)
    db.execute(
        "update pgnotify.notifications set status = %s, attempts = 1, claimed_by = 'daemon-a',"
        " lease_until = now() + interval '1 minute', run_at = now() + interval '1 hour'"
        " where id = %s",
        (status, nid),
    )
    before = db.execute("select * from pgnotify.notifications where id = %s", (nid,)).fetchone()

    assert retry(db, nid) is False
    assert (
        db.execute("select * from pgnotify.notifications where id = %s", (nid,)).fetchone()
        == before
    )


def test_retrying_an_unknown_id_returns_false(db: Conn) -> None:
    assert retry(db, 987654321) is False
