"""``make soak``: minutes of steady traffic with a random fault every few seconds.

A daemon subprocess delivers to a real SMTP server and a Twilio-shaped server while this
script inserts bookings at a steady rate and, every few seconds, breaks something: kills
the daemon (-9 or TERM) and restarts it, terminates its database connections, makes the
SMTP server answer 451/421 or stall past the send timeout, makes Twilio answer 500 or 429.
At the end it waits for the queue to drain and prints what was sent, failed, duplicated
and lost, and the daemon's RSS over time. Not part of ``make test``.

Its database is a fresh one on the server ``devcluster.find_server`` finds
(``PGNOTIFY_SOAK_DSN`` first), dropped at the end.

    python -m benchmarks.soak [--minutes 10] [--rate 10]
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg

from benchmarks.procs import daemon_env, memory_kib
from tests.devcluster import NoServer, find_server, fresh_database
from tests.peers.smtp import SmtpPeer
from tests.peers.twilio import TwilioPeer


def rss_kib(pid: int) -> int:
    """The daemon's RSS in KiB, 0 when it is gone (between a kill and its restart)."""
    try:
        return memory_kib(pid)["VmRSS"]
    except (OSError, KeyError):
        return 0


class Soak:
    def __init__(self, dsn: str, minutes: float, rate: float, seed: int) -> None:
        self.dsn, self.minutes, self.rate = dsn, minutes, rate
        self.rng = random.Random(seed)
        self.smtp = SmtpPeer().start()
        self.twilio = TwilioPeer().start()
        self.workdir = Path(tempfile.mkdtemp(prefix="pgnotify-soak-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.faults: Counter[str] = Counter()
        self.rss: list[tuple[float, int]] = []

    # -- the daemon ---------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        return daemon_env(
            {
                "DATABASE_URL": self.dsn,
                "SMTP_SERVER": self.smtp.host,
                "SMTP_PORT": self.smtp.port,
                "SMTP_SECURITY": "none",
                "FROM_EMAIL": "soak@pgnotify.example",
                "TWILIO_ACCOUNT_SID": self.twilio.account_sid,
                "TWILIO_AUTH_TOKEN": self.twilio.auth_token,
                "TWILIO_PHONE_NUMBER": "+15550001111",
                "TWILIO_API_URL": self.twilio.base_url,
                "NOTIFICATION_WORKERS": 3,
                "NOTIFICATION_BATCH_SIZE": 20,
                "NOTIFICATION_RETRY_DELAYS": "1,2,4",
                "NOTIFICATION_MAX_RETRIES": 6,
                "NOTIFICATION_SEND_TIMEOUT": 2,
                "NOTIFICATION_LEASE_SECONDS": 6,
                "NOTIFICATION_SHUTDOWN_GRACE": 3,
                "NOTIFICATION_PROBE_INTERVAL": 1,
                "NOTIFICATION_DB_TIMEOUT": 3,
                "NOTIFICATION_HEALTH_ADDR": "",
                "NOTIFICATION_LOG_LEVEL": "warning",
                "NOTIFICATION_LOG_FORMAT": "json",
                "NOTIFICATION_OUTBOX_DIR": self.workdir / "outbox",
            }
        )

    def start_daemon(self) -> None:
        log = (self.workdir / "daemon.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pgnotify.cli", "run"], env=self.env(), stdout=log, stderr=log
        )

    def stop_daemon(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    # -- faults -------------------------------------------------------------------------
    def inject(self, conn: psycopg.Connection[Any]) -> None:
        fault = self.rng.choice(
            [
                "kill9",
                "sigterm",
                "terminate_backends",
                "smtp_451",
                "smtp_421",
                "smtp_stall",
                "twilio_500",
                "twilio_429",
                "twilio_stall",
            ]
        )
        self.faults[fault] += 1
        if fault in ("kill9", "sigterm"):
            self.stop_daemon(signal.SIGKILL if fault == "kill9" else signal.SIGTERM)
            self.restarts += 1
            self.start_daemon()
        elif fault == "terminate_backends":
            conn.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity"
                " where datname = current_database() and application_name like 'pgnotify%'"
            )
        elif fault == "smtp_451":
            self.smtp.fail_next("451 4.3.0 soak says later", count=self.rng.randint(1, 5))
        elif fault == "smtp_421":
            self.smtp.fail_next("421 4.3.2 closing", count=self.rng.randint(1, 3))
        elif fault == "smtp_stall":
            self.smtp.stall_next(3.0, count=self.rng.randint(1, 3))
        elif fault == "twilio_500":
            self.twilio.fail_next(500, code=20500, count=self.rng.randint(1, 5))
        elif fault == "twilio_429":
            self.twilio.fail_next(429, code=20429, retry_after="1", count=self.rng.randint(1, 5))
        else:
            self.twilio.stall_next(3.0, count=self.rng.randint(1, 3))

    # -- the run ------------------------------------------------------------------------
    def setup(self, db: psycopg.Connection[Any]) -> tuple[Any, ...]:
        ids = db.execute(
            "with s as (insert into booking.shops (name, timezone) values"
            " ('Soak Shop', 'Europe/Madrid') returning id),"
            " st as (insert into booking.staff (shop_id, name) select id, 'Sam' from s"
            " returning id),"
            " sv as (insert into booking.services (shop_id, name, duration_minutes,"
            " price_cents) select id, 'Cut', 30, 2000 from s returning id)"
            " select s.id, st.id, sv.id from s, st, sv"
        ).fetchone()
        assert ids is not None
        # Reminders in seconds for this shop, so they come due during the soak.
        db.execute(
            "insert into pgnotify.reminder_rules (shop_id, kind, before_start)"
            " values (%s, 'reminder_24h', '20 seconds'),"
            " (%s, 'reminder_2h', '8 seconds')",
            (ids[0], ids[0]),
        )
        return tuple(ids)

    def book(self, db: psycopg.Connection[Any], ids: tuple[Any, ...], n: int) -> None:
        with db.transaction():
            cust = db.execute(
                "insert into booking.customers (name, email, phone, user_id) values"
                " (%s, %s, %s, gen_random_uuid()) returning id",
                (f"Customer {n}", f"c{n}@soak.example", f"+1555{n:07d}"),
            ).fetchone()
            assert cust is not None
            db.execute(
                "insert into booking.bookings (shop_id, staff_id, service_id, customer_id,"
                " starts_at, duration_minutes, total_cents, status)"
                " values (%s, %s, %s, %s, now() + interval '30 seconds', 30, 2000,"
                " 'confirmed')",
                (*ids, cust[0]),
            )

    def run(self) -> int:
        with psycopg.connect(self.dsn, autocommit=True) as db:
            ids = self.setup(db)
            self.start_daemon()
            started = time.monotonic()
            end = started + self.minutes * 60
            next_fault = started + self.rng.uniform(3, 8)
            next_sample = started
            n = 0
            while time.monotonic() < end:
                self.book(db, ids, n)
                n += 1
                now = time.monotonic()
                if now >= next_fault:
                    self.inject(db)
                    next_fault = now + self.rng.uniform(3, 8)
                if now >= next_sample and self.proc is not None:
                    self.rss.append((now - started, rss_kib(self.proc.pid)))
                    next_sample = now + 10
                time.sleep(max(0.0, 1 / self.rate - (time.monotonic() - now)))
            print(f"inserted {n} bookings in {self.minutes:g} min; draining...", flush=True)
            drained = self.drain(db)
            self.report(db, n, drained)
            self.stop_daemon(signal.SIGTERM)
        self.smtp.stop()
        self.twilio.stop()
        return 0

    def drain(self, db: psycopg.Connection[Any], timeout: float = 180) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = db.execute(
                "select count(*) from pgnotify.notifications where status in ('pending', 'sending')"
            ).fetchone()
            if row and row[0] == 0:
                return True
            time.sleep(1)
        return False

    def report(self, db: psycopg.Connection[Any], bookings: int, drained: bool) -> None:
        counts = dict(
            db.execute(
                "select status, count(*) from pgnotify.notifications group by status"
            ).fetchall()
        )
        sent_email = {
            r[0]
            for r in db.execute(
                "select provider_id from pgnotify.notifications where channel = 'email'"
                " and status = 'sent'"
            )
        }
        got_email = Counter(m.parsed()["Message-ID"] for m in self.smtp.messages)
        sent_sms = db.execute(
            "select count(*) from pgnotify.notifications where channel = 'sms' and status = 'sent'"
        ).fetchone()
        got_sms = Counter((m.to, m.body) for m in self.twilio.messages)
        email_dupes = sum(c - 1 for c in got_email.values())
        sms_dupes = sum(c - 1 for c in got_sms.values())
        email_lost = len(sent_email - set(got_email))
        rss = [kib for _, kib in self.rss if kib]
        print("\n== soak result ==")
        print(f"bookings inserted      {bookings}")
        print(f"notifications by status {dict(sorted(counts.items()))}")
        print(f"drained                {drained}")
        print(f"faults injected        {dict(self.faults)}  (daemon restarts: {self.restarts})")
        print(
            f"email sent/received    {len(sent_email)}/{len(got_email)} unique,"
            f" duplicates {email_dupes}, lost {email_lost}"
        )
        print(
            f"sms sent/received      {sent_sms[0] if sent_sms else 0}/{len(got_sms)} unique,"
            f" duplicates {sms_dupes}"
        )
        print(f"still pending/sending  {counts.get('pending', 0) + counts.get('sending', 0)}")
        if rss:
            print(
                f"daemon RSS (MiB)       max {max(rss) / 1024:.1f}, "
                f"last {rss[-1] / 1024:.1f}; curve: "
                + " ".join(f"{t:.0f}s:{kib / 1024:.0f}" for t, kib in self.rss[::3])
            )
        print(f"daemon log             {self.workdir / 'daemon.log'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=10.0, help="bookings per second")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args()
    try:
        with (
            find_server(dsn_env="PGNOTIFY_SOAK_DSN") as server,
            fresh_database(server.admin_dsn, prefix="pgnotify_soak") as dsn,
        ):
            print(f"postgres: {server.how}", flush=True)
            return Soak(dsn, args.minutes, args.rate, args.seed).run()
    except NoServer as exc:
        raise SystemExit(f"benchmarks.soak: {exc}") from None


if __name__ == "__main__":
    sys.exit(main())
