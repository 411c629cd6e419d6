"""What the benchmark puts in its own database (``devcluster.fresh_database``): seeded
set-based, queued in bursts, reset between measurements.

Every statement the benchmark runs against the schema is here, named, on one page. The
world is a few dozen shops and a few thousand customers; queue rows are inserted with one
``insert … select … from generate_series`` against real bookings, so the claim's
``render_contexts()`` finds a real booking, shop, staff, service and customer for each.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

SHOPS = 40
CUSTOMERS = 4000
BOOKINGS = 2000  # the bookings queue rows point at (each row renders a real context)
KINDS = ("booking_confirmed", "reminder_24h", "reminder_2h")  # one in three emails has an ICS

# -- seed_world --
# Shops (en/es, four time zones), one staff member and one service per shop, customers with
# an email, an E.164 phone and a user id (a quarter prefer Spanish), and `bench_pairs`: the
# k-th (shop, staff, service, customer) combination every booking insert below draws from.
SEED_WORLD = (
    """
    insert into booking.shops (name, timezone, email, phone, address, locale)
    select 'Barbería ' || g,
           (array['Europe/Madrid', 'America/New_York', 'UTC', 'America/Mexico_City'])
               [1 + mod(g, 4)],
           'shop' || g || '@bench.example', '+3491' || lpad(g::text, 7, '0'),
           'Calle Mayor ' || g || ', Madrid', case when mod(g, 3) = 0 then 'es' else 'en' end
    from generate_series(1, $1::int) g
    """,
    "insert into booking.staff (shop_id, name) select id, 'Luis ' || name from booking.shops",
    """
    insert into booking.services (shop_id, name, duration_minutes, price_cents, currency)
    select id, 'Skin fade', 45, 2500, 'EUR' from booking.shops
    """,
    """
    insert into booking.customers (name, email, phone, user_id, locale)
    select 'Customer ' || g, 'customer' || g || '@bench.example',
           '+346' || lpad(g::text, 8, '0'), gen_random_uuid(),
           case when mod(g, 4) = 0 then 'es' end
    from generate_series(1, $1::int) g
    """,
    """
    create table public.bench_pairs as
    select c.k, s.shop_id, s.staff_id, s.service_id, c.id as customer_id
    from (select id, (row_number() over (order by id) - 1)::int as k
          from booking.customers) c
    join (select sh.id as shop_id, st.id as staff_id, sv.id as service_id,
                 (row_number() over (order by sh.id) - 1)::int as k
          from booking.shops sh
          join booking.staff st on st.shop_id = sh.id
          join booking.services sv on sv.shop_id = sh.id) s
      on s.k = mod(c.k, (select count(*) from booking.shops)::int)
    """,
    "create unique index on public.bench_pairs (k)",
    "analyze",
)

# -- insert_bookings --
# $1 confirmed bookings in one statement, three days ahead and one minute apart (so their
# reminders are due in the future), drawn round-robin from bench_pairs.
INSERT_BOOKINGS = """
insert into booking.bookings (shop_id, staff_id, service_id, customer_id, starts_at,
                              duration_minutes, total_cents, currency, status)
select p.shop_id, p.staff_id, p.service_id, p.customer_id,
       date_trunc('minute', now()) + interval '3 days' + make_interval(mins => g),
       45, 2500, 'EUR', 'confirmed'
from generate_series(1, $1::int) g
join public.bench_pairs p on p.k = mod(g, (select count(*) from public.bench_pairs)::int)
"""

# -- insert_booking --
# One confirmed booking, as an application inserts it (one row per statement).
INSERT_BOOKING = """
insert into booking.bookings (shop_id, staff_id, service_id, customer_id, starts_at,
                              duration_minutes, total_cents, currency, status)
values ($1, $2, $3, $4, date_trunc('minute', now()) + interval '3 days' + make_interval(mins => $5),
        45, 2500, 'EUR', 'confirmed')
returning id
"""

# -- pairs --
PAIRS = "select shop_id, staff_id, service_id, customer_id from public.bench_pairs order by k"

# -- remember_bookings --
# The bookings queue rows point at, numbered for the round-robin in insert_due.
REMEMBER_BOOKINGS = """
create table public.bench_bookings as
select (row_number() over (order by b.created_at, b.id) - 1)::int as k,
       b.id, b.customer_id, b.shop_id, c.email, c.phone, c.user_id
from booking.bookings b join booking.customers c on c.id = b.customer_id;
create unique index on public.bench_bookings (k);
analyze public.bench_bookings;
"""

# -- insert_due --
# $1 notifications due now, one statement: channels cycle through $2 and each booking
# (round-robin) gets one row per channel, adjacent, as a burst of reminders would; kinds
# cycle through $3 per booking. `manual:` occurrences are unique per row ($4 tags the
# batch) and exempt reminders from the reschedule re-check, so every row is really sent.
INSERT_DUE = """
insert into pgnotify.notifications (kind, channel, booking_id, customer_id, shop_id,
                                    recipient, occurrence, run_at)
select ($3::text[])[1 + mod(g / cardinality($2::text[]), cardinality($3::text[]))],
       ch, b.id, b.customer_id, b.shop_id,
       case ch when 'email' then b.email when 'sms' then b.phone else b.user_id::text end,
       'manual:bench-' || $4::text || '-' || g,
       now() - interval '1 second'
from generate_series(1, $1::int) g
cross join lateral (select ($2::text[])[1 + mod(g, cardinality($2::text[]))] as ch) c
join public.bench_bookings b
  on b.k = mod(g / cardinality($2::text[]), (select count(*) from public.bench_bookings)::int)
"""

# -- outcome_counts --
OUTCOME_COUNTS = "select status, count(*) from pgnotify.notifications group by status"

# -- unfinished --
# Are rows still due or in flight? An EXISTS on each partial index: polling this costs
# Postgres next to nothing, unlike a count over a 30,000-row backlog.
UNFINISHED = """
select exists (select 1 from pgnotify.notifications where status = 'pending'
                                                     and channel <> 'inapp' and run_at <= now())
    or exists (select 1 from pgnotify.notifications where status = 'pending'
                                                     and channel = 'inapp' and run_at <= now())
    or exists (select 1 from pgnotify.notifications where status = 'sending')
"""

# -- last_finished --
LAST_FINISHED = """
select extract(epoch from max(updated_at))::float8 from pgnotify.notifications
where status <> 'pending'
"""

# -- reset_queue --
RESET_QUEUE = "truncate pgnotify.notifications, pgnotify.inbox"

# -- forget_extra_bookings --
# Back to the seeded bookings only (the trigger benchmark and latency runs add their own).
FORGET_EXTRA_BOOKINGS = """
delete from booking.bookings b
where not exists (select 1 from public.bench_bookings k where k.id = b.id)
"""


async def seed_world(conn: asyncpg.Connection) -> None:
    """Shops, staff, services, customers and ``bench_pairs`` (no bookings yet).

    The shop's alerts are switched off (their default routes): every figure measures the
    customer's messages, as runs before the alerts existed did. On, they add an email per
    confirmed booking, and at the latency run's 200 bookings/s this 2-core box (daemon,
    Postgres, both peers and the inserter) no longer keeps up.
    """
    shops, staff, services, customers, *rest = SEED_WORLD
    await conn.execute(shops, SHOPS)
    await conn.execute(staff)
    await conn.execute(services)
    await conn.execute(customers, CUSTOMERS)
    for statement in rest:
        await conn.execute(statement)
    await conn.execute(
        "update pgnotify.routes set enabled = false where shop_id is null"
        " and kind in (select kind from pgnotify.kinds where audience = 'shop')"
    )


async def seed_bookings(conn: asyncpg.Connection, count: int = BOOKINGS) -> None:
    """The bookings queue rows point at, inserted without the lifecycle triggers."""
    async with conn.transaction():
        await conn.execute("alter table booking.bookings disable trigger user")
        await conn.execute(INSERT_BOOKINGS, count)
        await conn.execute("alter table booking.bookings enable trigger user")
    await conn.execute(REMEMBER_BOOKINGS)


async def insert_due(
    conn: asyncpg.Connection,
    count: int,
    channels: Sequence[str],
    tag: str,
    kinds: Sequence[str] = KINDS,
) -> None:
    """Queue ``count`` due notifications in one statement (its own transaction)."""
    await conn.execute(INSERT_DUE, count, list(channels), list(kinds), tag)


# -- bare_claim --
# The reference loop's claim: the daemon's lease claim without context, re-check or
# pauses, over the rows of its partial index (email and SMS; the in-app index has the same
# shape, and the loop does nothing per row that depends on the channel).
BARE_CLAIM = """
with due as (
    select id from pgnotify.notifications
    where status = 'pending' and run_at <= now() and channel <> 'inapp'
    order by run_at, id
    limit $1
    for update skip locked
)
update pgnotify.notifications n
   set status = 'sending', attempts = n.attempts + 1, claimed_by = $2,
       lease_until = now() + interval '2 minutes', updated_at = now()
  from due
 where n.id = due.id
returning n.id
"""

# -- bare_complete --
BARE_COMPLETE = """
update pgnotify.notifications
   set status = 'sent', sent_at = now(), lease_until = null, updated_at = now()
 where id = any ($1::bigint[]) and status = 'sending' and claimed_by = $2
"""

# -- insert_history --
# $1 finished (sent) rows, a day old: the history a running system's queue table holds.
# Analyzed before a burst arrives, it gives the planner the statistics a real burst meets
# (pending rows are rare), instead of whatever the previous measurement left behind.
INSERT_HISTORY = """
insert into pgnotify.notifications (kind, channel, booking_id, customer_id, shop_id,
                                    recipient, occurrence, run_at, status, attempts,
                                    sent_at, created_at, updated_at)
select 'booking_confirmed', ch, b.id, b.customer_id, b.shop_id,
       case ch when 'email' then b.email when 'sms' then b.phone else b.user_id::text end,
       'manual:history-' || g, now() - interval '1 day', 'sent', 1,
       now() - interval '1 day', now() - interval '1 day', now() - interval '1 day'
from generate_series(1, $1::int) g
cross join lateral (select (array['email', 'sms', 'inapp'])[1 + mod(g, 3)] as ch) c
join public.bench_bookings b
  on b.k = mod(g / 3, (select count(*) from public.bench_bookings)::int)
"""


# -- set_wakeup_notify --
# The operator's switch for the wake-up NOTIFY of the queue's triggers (pgnotify.settings).
SET_WAKEUP_NOTIFY = "update pgnotify.settings set wakeup_notify = $1"

# -- sample_waits --
# One sample of what database $1's client backends are doing: each active one's wait event
# ('running' when on CPU), each one idle inside a transaction (a daemon rendering between
# its claim and its commit), and how many lock requests are not granted. Run from another
# database, so that the sampler's own backend is not measured as the benchmark's.
SAMPLE_WAITS = """
select array(
         select case when a.state = 'active'
                     then coalesce(a.wait_event_type || ':' || a.wait_event, 'running')
                     else a.state end
         from pg_stat_activity a
         where a.datname = $1 and a.backend_type = 'client backend'
           and a.state in ('active', 'idle in transaction')) as states,
       (select count(*) from pg_locks l join pg_database d on d.oid = l.database
        where d.datname = $1 and not l.granted)::int as ungranted
"""
