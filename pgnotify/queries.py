"""Every statement the daemon runs, named, on one page.

Each is one round trip for a whole batch. Every state change of a leased row is
conditional on the row still being ``sending`` and claimed by this daemon
(``claimed_by = $daemon``), so a late worker can never overwrite a row that another daemon
re-claimed after a lease expiry; an in-app row is written only by the transaction that
holds its lock.
Time is always the database's clock: daemons on other hosts may have skewed clocks.
"""

from __future__ import annotations

# -- claim_due, lock_inapp --
# Two claims share one statement's text. A row sent over a network (email, SMS) is claimed under
# a lease (CLAIM_DUE: `sending`, then sent and recorded apart); an in-app row is only
# locked (lock_inapp), inside a transaction in which the worker composes it and writes its
# outcome with its inbox message (FINISH_INAPP): one write, never `sending`. Each takes
# up to $1 due pending rows of its own partial index, in order, and returns each with its
# rendering context and why it must not be sent, if so (both computed in SQL, for the
# whole batch at once: pgnotify.render_contexts is called once per claim).
#
# The recipient is read here, at send time, from the booking's current customer (by the
# rule the triggers apply when queuing, pgnotify.recipient_of), and recorded in
# `recipient` with the customer in `customer_id`: a booking given to another customer, or
# a changed email or phone, applies to everything not yet sent. The shop's kinds
# (`pgnotify.kinds.audience`) go to the shop's current email and phone instead, with no
# customer_id (a customer's opt-out is not the shop's). `stale_reason` is
# pgnotify.send_problem: a stale reminder, a booking messages cannot show, an opt-out or
# a contact that fails validation; the daemon skips such a row with it.
#
# Nothing in this statement does arithmetic on a row's data (render_contexts and
# send_problem only compare), so no row can make it fail for the others. Should a data
# error (SQLSTATE class 22) escape anyway, the worker claims the rows one at a time
# (CLAIM_ONE, LOCK_INAPP_ONE: the same statement over one row) and fails the guilty one
# (FAIL_ROW).
_CHECKED = """
with due as (
    select id, kind, channel, booking_id, payment_id, occurrence, attempts, run_at,
           ics_sequence, recipient as stored_recipient, customer_id as stored_customer_id
    from pgnotify.notifications
    /*due*/
), contexts as (
    select * from pgnotify.render_contexts(array(select booking_id from due),
                                           array(select payment_id from due))
), addressed as (
    select d.*, x.booking_id is not null as found, x.booking_status, x.starts_at, x.problem,
           x.context, coalesce(a.audience, 'customer') as audience,
           case when a.audience = 'shop' then null else x.customer_id end as customer_id,
           case when a.audience = 'shop' then x.shop_email else x.email end as email,
           case when a.audience = 'shop' then x.shop_phone else x.phone end as phone,
           case when a.audience = 'shop' then null else x.user_id end as user_id
    from due d
    left join contexts x
           on x.booking_id = d.booking_id and x.payment_id is not distinct from d.payment_id
    left join pgnotify.kinds a on a.kind = d.kind
), checked as (
    -- A vanished booking keeps the recipient it was queued for (it is skipped anyway).
    select d.id, d.kind, d.channel, d.booking_id, d.payment_id, d.attempts, d.run_at,
           d.ics_sequence, d.audience, d.context,
           case when d.found then d.customer_id else d.stored_customer_id end as customer_id,
           case when d.found then pgnotify.recipient_of(d.channel, d.email, d.phone, d.user_id)
                else d.stored_recipient end as recipient,
           pgnotify.send_problem(d.kind, d.channel, d.occurrence, d.booking_status,
                                 d.starts_at, d.problem, d.email, d.phone, d.user_id,
                                 o.customer_id is not null, o.reason, d.audience) as problem
    from addressed d
    -- The answer to HELP goes despite an opt-out: carriers require it (as `enqueue`).
    left join pgnotify.opt_outs o on o.customer_id = d.customer_id and o.channel = d.channel
                                 and d.kind <> 'sms_help'
), taken as (
    /*take*/
)
select t.id, t.kind, t.channel, t.recipient, t.customer_id, t.booking_id, t.payment_id,
       t.attempts, t.run_at, t.ics_sequence, t.audience,
       -- Sibling rows (one booking's email, SMS and in-app) share one context: send it
       -- once, on the first of them; the daemon hands it to the others.
       case when row_number() over (partition by t.booking_id, t.payment_id order by t.id) = 1
            then t.context end as context,
       t.problem as stale_reason
from taken t
order by t.run_at, t.id
"""

# Rows sent over a network: marked ours under a lease ($2 daemon, $3 lease seconds),
# attempt counted; channels paused in this daemon ($4) are left alone.
_LEASE = """
    update pgnotify.notifications n
       set status = 'sending', attempts = n.attempts + 1, claimed_by = $2,
           lease_until = now() + make_interval(secs => $3), updated_at = now(),
           customer_id = k.customer_id, recipient = k.recipient
      from checked k
     where n.id = k.id
    returning n.id, n.kind, n.channel, n.recipient, n.customer_id, n.booking_id, n.payment_id,
              n.attempts, n.run_at, n.ics_sequence, k.audience, k.context, k.problem
"""

# In-app rows: locked only, by the transaction that will write them; `attempts` and the
# customer and recipient come back as FINISH_INAPP will record them.
_LOCK = """
    select id, kind, channel, recipient, customer_id, booking_id, payment_id,
           attempts + 1 as attempts, run_at, ics_sequence, audience, context, problem
    from checked
"""


def _claim(take: str, due: str) -> str:
    return _CHECKED.replace("/*take*/", take.strip()).replace("/*due*/", due.strip())


CLAIM_DUE = _claim(
    _LEASE,
    """
    where status = 'pending' and run_at <= now() and channel <> 'inapp'
      and channel <> all ($4::text[])
    order by run_at, id
    limit $1
    for update skip locked""",
)

# -- claim_one --
# The claim of row $1 alone, if it is still due and free (same parameters otherwise):
# the worker's fallback when CLAIM_DUE failed on some row's data.
CLAIM_ONE = _claim(
    _LEASE,
    """
    where id = $1::bigint and status = 'pending' and run_at <= now() and channel <> 'inapp'
      and channel <> all ($4::text[])
    for update skip locked""",
)

_LOCK_INAPP = _claim(
    _LOCK,
    """
    where status = 'pending' and run_at <= now() and channel = 'inapp'
    order by run_at, id
    limit /*limit*/
    for update skip locked""",
)


def lock_inapp(batch_size: int) -> str:
    """The in-app lock for batches of ``batch_size``, a number written into the statement.

    The daemon's batch size is fixed for its life, and a prepared statement without
    parameters is planned once per connection and its plan reused (ANALYZE invalidates
    it), where one with parameters is planned at every run (``plan_cache_mode =
    force_custom_plan``, db.py): about a tenth of this claim's cost in Postgres. The plan
    is the one a custom plan would be, every value being known. Behind PgBouncer there is
    no statement cache (``DATABASE_PGBOUNCER``), so every run is planned anyway.
    """
    return _LOCK_INAPP.replace("/*limit*/", str(int(batch_size)))


# -- lock_inapp_one --
# lock_inapp() of row $1 alone (the fallback, as CLAIM_ONE).
LOCK_INAPP_ONE = _claim(
    _LOCK,
    """
    where id = $1::bigint and status = 'pending' and run_at <= now() and channel = 'inapp'
    for update skip locked""",
)

# -- due_ids, due_inapp_ids --
# The ids CLAIM_DUE (lock_inapp) would take, in its order, without taking them (the
# fallback's list).
DUE_IDS = """
select id
from pgnotify.notifications
where status = 'pending' and run_at <= now() and channel <> 'inapp'
  and channel <> all ($2::text[])
order by run_at, id
limit $1
"""
DUE_INAPP_IDS = """
select id
from pgnotify.notifications
where status = 'pending' and run_at <= now() and channel = 'inapp'
order by run_at, id
limit $1
"""

# -- finish_inapp --
# The outcomes of the in-app rows this transaction locked (lock_inapp), in one statement,
# each row written once, straight from `pending`: a `sent` row gets its inbox message ($5
# title, $6 body, $7 data) and is marked sent with the inbox id; the others get their
# status, error and retry delay. Every attempt counts (unless $10 `release`: nothing was
# tried), the customer and recipient are those the lock read ($8, $9), and `claimed_by`
# names this daemon ($11), the one that took the row. Then NOTIFY pgnotify_inbox once per
# user, so the application can push the messages live. The caller's transaction holds the
# rows' locks; a row no longer pending is left alone all the same. An inbox message
# already there for a row (the unique key) fails the statement. Times are the
# statement's, not the transaction's: templates rendered since it began.
#
# The two UPDATEs touch different rows, each joined to one set only: a join between the
# CTEs, whose sizes the planner cannot know, would be planned as a nested loop over both.
FINISH_INAPP = """
with u as (
    select *
    from unnest($1::bigint[], $2::text[], $3::float8[], $4::text[], $5::text[], $6::text[],
                $7::jsonb[], $8::uuid[], $9::text[], $10::bool[])
         as u (id, status, delay, last_error, title, body, data, customer_id, recipient,
               release)
), inserted as (
    insert into pgnotify.inbox (customer_id, user_id, notification_id, kind, title, body, data,
                                created_at)
    select u.customer_id, u.recipient::uuid, n.id, n.kind, u.title, u.body, u.data,
           statement_timestamp()
    from u join pgnotify.notifications n on n.id = u.id and n.status = 'pending'
    where u.status = 'sent'
    returning id, notification_id, customer_id, user_id
), sent as (
    update pgnotify.notifications n
       set status = 'sent', attempts = n.attempts + 1, last_error = null,
           provider_id = 'inbox:' || i.id, sent_at = statement_timestamp(),
           customer_id = i.customer_id, recipient = i.user_id::text, claimed_by = $11,
           updated_at = statement_timestamp()
      from inserted i
     where n.id = i.notification_id and n.status = 'pending'
    returning n.id
), unsent as (
    update pgnotify.notifications n
       set status = u.status,
           run_at = case when u.delay is null then n.run_at
                         else statement_timestamp() + make_interval(secs => u.delay) end,
           attempts = case when u.release then n.attempts else n.attempts + 1 end,
           last_error = u.last_error, customer_id = u.customer_id, recipient = u.recipient,
           claimed_by = $11, updated_at = statement_timestamp()
      from u
     where n.id = u.id and u.status <> 'sent' and n.status = 'pending'
    returning n.id
), woken as (
    select count(pg_notify('pgnotify_inbox', user_id::text)) as n
    from (select distinct user_id from inserted) d
)
-- One row: the ids written, and how many users were woken (a scalar sub-select, so that
-- `woken` runs whatever the other lists hold).
select array(select id from sent union all select id from unsent) as ids,
       (select n from woken) as users_woken
"""

# -- lock_pending --
# Those of rows $1 that are still pending, locked (after a failed FINISH_INAPP: the
# transaction that held them rolled back, so another daemon may have taken them since).
LOCK_PENDING = """
select id from pgnotify.notifications
where id = any ($1::bigint[]) and status = 'pending'
for update skip locked
"""

# -- fail_row --
# Row $1 cannot go on ($2 says why: it made the claim fail with a data error, or its
# in-app write failed even as a failed attempt): it becomes a dead letter, so that it
# stops failing the others' claims and writes. Conditional: only while still pending.
FAIL_ROW = """
update pgnotify.notifications
   set status = 'failed', lease_until = null, updated_at = now(), last_error = $2::text
 where id = $1 and status = 'pending'
returning id
"""

# -- record_outcomes --
# Apply a batch of outcomes. `release` gives the attempt back (configuration errors and
# shutdown: nothing was tried). `delay` is seconds from now for rows going back to pending.
RECORD_OUTCOMES = """
update pgnotify.notifications n
   set status = u.status,
       run_at = case when u.delay is null then n.run_at
                     else now() + make_interval(secs => u.delay) end,
       attempts = case when u.release then greatest(n.attempts - 1, 0) else n.attempts end,
       last_error = u.last_error,
       provider_id = coalesce(u.provider_id, n.provider_id),
       sent_at = case when u.status = 'sent' then now() else n.sent_at end,
       lease_until = null,
       updated_at = now()
  from unnest($1::bigint[], $2::text[], $3::float8[], $4::text[], $5::text[], $6::bool[])
       as u (id, status, delay, last_error, provider_id, release)
 where n.id = u.id and n.status = 'sending' and n.claimed_by = $7
returning n.id
"""

# -- next_run_at --
# When the scheduler should look again: the earliest pending run_at (both partial
# indexes), and whether the queue's triggers send wake-ups (pgnotify.settings; no row
# counts as on).
NEXT_RUN_AT = """
select extract(epoch from (least(
           (select min(run_at) from pgnotify.notifications
            where status = 'pending' and channel <> 'inapp' and channel <> all ($1::text[])),
           (select min(run_at) from pgnotify.notifications
            where status = 'pending' and channel = 'inapp' and channel <> all ($1::text[])))
       - now()))::float8 as due_in,
       coalesce((select wakeup_notify from pgnotify.settings), true) as wakeup_notify
"""

# -- rescue_expired_leases --
# Rows a crashed or partitioned daemon left in `sending` go back to pending; a row whose
# attempts are spent (it may be what crashes daemons) goes to failed instead. A daemon
# skips the rows whose outcomes it still holds ($2) and will record when the database
# answers again; its other expired rows (a claim whose reply was lost) are rescued too.
RESCUE_EXPIRED_LEASES = """
update pgnotify.notifications
   set status = case when attempts > $1 then 'failed' else 'pending' end,
       last_error = 'lease expired while ' || coalesce(claimed_by, 'a daemon')
                    || ' held it (daemon stopped or lost the database)'
                    || case when attempts > $1 then '; attempts exhausted' else '' end,
       run_at = now(), lease_until = null, updated_at = now()
 where status = 'sending' and lease_until < now() and id <> all ($2::bigint[])
returning id
"""

# -- release_claimed --
# At shutdown: give back everything this daemon still holds, attempts restored.
RELEASE_CLAIMED = """
update pgnotify.notifications
   set status = 'pending', attempts = greatest(attempts - 1, 0), lease_until = null,
       run_at = now(), updated_at = now(),
       last_error = coalesce(last_error, 'released at shutdown before it was sent')
 where status = 'sending' and claimed_by = $1
   and id <> all ($2::bigint[])  -- outcomes still being recorded: the lease decides
returning id
"""

# -- inbound_resume --
# Where the reply poller resumes: the newest reply pgnotify holds from Twilio, or $1 (a
# first poll) when it has none. It asks from a little before that, de-duplicating by SID.
INBOUND_RESUME = """
select coalesce(max(received_at), $1::timestamptz) from pgnotify.inbound_messages
where channel = 'sms' and provider_id is not null
"""

# -- insert_inbound --
# The replies the poller fetched ($1 SIDs, $2 senders, $3 numbers, $4 bodies, $5 sent
# times or null for now), one round trip; known SIDs are dropped (the webhook may have
# inserted them, or an earlier poll). The trigger acts on each new one.
INSERT_INBOUND = """
insert into pgnotify.inbound_messages (provider_id, from_address, to_address, body, received_at)
select sid, sender, number, body, coalesce(sent, now())
from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[])
     as m (sid, sender, number, body, sent)
on conflict do nothing
returning id
"""

# -- record_opt_out --
# Twilio said the recipient replied STOP: the triggers must queue no more SMS for them.
RECORD_OPT_OUT = """
insert into pgnotify.opt_outs (customer_id, channel, reason, source)
select customer_id, $2, $3, '21610' from pgnotify.notifications
where id = $1 and customer_id is not null
on conflict do nothing
"""

# -- catalog --
# The kinds and channels pgnotify knows, the one list (read once at start), with the kinds
# addressed to the shop and those about a payment.
CATALOG = """
select array(select kind from pgnotify.kinds order by kind) as kinds,
       array(select channel from pgnotify.channels order by channel) as channels,
       array(select kind from pgnotify.kinds where audience = 'shop' order by kind)
           as shop_kinds,
       array(select kind from pgnotify.kinds where about_payment order by kind)
           as payment_kinds
"""

# -- purge_finished --
PURGE_FINISHED = "select pgnotify.purge(make_interval(days => $1), $2)"

# -- purge_read_inbox --
# Read in-app messages created more than $1 days ago, at most $2 per call.
PURGE_READ_INBOX = "select pgnotify.purge_inbox(make_interval(days => $1), $2)"

# -- ping --
PING = "select 1"

# -- notification_queue_usage --
# How full Postgres' NOTIFY queue is (0..1); a listener that stops reading fills it.
NOTIFICATION_QUEUE_USAGE = "select pg_notification_queue_usage()"

# -- is_listening --
IS_LISTENING = "select $1 = any (array(select pg_listening_channels()))"


# ---------------------------------------------------------------------------------------
# The CLI's statements (psycopg: %s placeholders).

# -- status_table --
STATUS = "select * from pgnotify.status"

# -- server_version --
SERVER_VERSION = "show server_version"

# -- applied_migrations --
APPLIED_MIGRATIONS = "select version from pgnotify.schema_migrations order by version"

# -- retry_one --
RETRY_ONE = "select pgnotify.retry(%s)"

# -- retry_all_failed --
# Every dead letter (optionally of one kind), each through pgnotify.retry.
RETRY_ALL_FAILED = """
select id, pgnotify.retry(id) from pgnotify.notifications
where status = 'failed' and (%(kind)s::text is null or kind = %(kind)s)
order by id
"""

# -- preview_context --
# The raw rendering context of a booking (with its latest payment for payment kinds),
# from the same function the claim uses.
PREVIEW_CONTEXT = """
select x.context
from pgnotify.render_contexts(
    array[%(booking_id)s::uuid],
    array[case when %(with_payment)s then (
        select p.id from booking.payments p where p.booking_id = %(booking_id)s::uuid
        order by p.updated_at desc, p.created_at desc limit 1) end]) x
"""
