-- 001: the baseline schema. Every table, view, function and grant pgnotify needs, each
-- defined once, in its current form. Later changes are new numbered files.
--
--   1. Booking model     schema `booking`, as CONTRACT.md §1 fixes it
--   2. Queue             routing and reminder rules, opt-outs, notifications, inbox
--   3. Lifecycle         which row changes cause which notifications (CONTRACT.md §2),
--                        and the wake-up of the daemon
--   4. Daemon support    what the daemon asks of the database at send time
--   5. Operator API      what operators use from psql (CONTRACT.md §3), retention
--   6. Roles and grants  `pgnotify_daemon`, least privilege


-- ===========================================================================================
-- 1. Booking model
-- ===========================================================================================
--
-- The application owns these rows: it INSERTs and UPDATEs them and nothing else. Every
-- notification follows from the lifecycle triggers (section 3), so this section holds no
-- pgnotify logic beyond keeping `updated_at` honest, which those triggers use as the row
-- version.

create schema if not exists booking;

create table booking.shops (
    id         uuid primary key default gen_random_uuid(),
    name       text not null,
    timezone   text not null default 'UTC',
    email      text,
    phone      text,
    address    text,
    locale     text not null default 'en',
    created_at timestamptz not null default now()
);

create table booking.staff (
    id      uuid primary key default gen_random_uuid(),
    shop_id uuid not null references booking.shops (id) on delete cascade,
    name    text not null
);
create index staff_shop_id_idx on booking.staff (shop_id);

create table booking.services (
    id               uuid primary key default gen_random_uuid(),
    shop_id          uuid not null references booking.shops (id) on delete cascade,
    name             text not null,
    duration_minutes int  not null check (duration_minutes > 0),
    price_cents      int  not null check (price_cents >= 0),
    currency         text not null default 'USD' check (currency ~ '^[A-Z]{3}$')
);
create index services_shop_id_idx on booking.services (shop_id);

create table booking.customers (
    id         uuid primary key default gen_random_uuid(),
    name       text not null,
    email      text,
    -- E.164 is expected but not enforced here: a bad number must not break the app's
    -- INSERT; the lifecycle turns it into a `skipped` notification with the reason.
    phone      text,
    user_id    uuid,
    locale     text,
    timezone   text,
    created_at timestamptz not null default now()
);

create table booking.bookings (
    id                  uuid primary key default gen_random_uuid(),
    shop_id             uuid not null references booking.shops (id),
    staff_id            uuid not null references booking.staff (id),
    service_id          uuid not null references booking.services (id),
    customer_id         uuid not null references booking.customers (id),
    starts_at           timestamptz not null,
    duration_minutes    int  not null check (duration_minutes > 0),
    total_cents         int  not null check (total_cents >= 0),
    currency            text not null default 'USD' check (currency ~ '^[A-Z]{3}$'),
    status              text not null default 'pending'
        check (status in ('pending', 'confirmed', 'cancelled', 'completed', 'no_show')),
    cancellation_reason text,
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now()
);
create index bookings_customer_id_idx on booking.bookings (customer_id);
create index bookings_shop_id_starts_at_idx on booking.bookings (shop_id, starts_at);

create table booking.payments (
    id             uuid primary key default gen_random_uuid(),
    booking_id     uuid not null references booking.bookings (id) on delete cascade,
    amount_cents   int  not null check (amount_cents >= 0),
    currency       text not null default 'USD' check (currency ~ '^[A-Z]{3}$'),
    status         text not null default 'pending'
        check (status in ('pending', 'succeeded', 'failed', 'refunded')),
    provider       text,
    provider_ref   text,
    failure_reason text,
    created_at     timestamptz not null default now(),
    updated_at     timestamptz not null default now()
);
create index payments_booking_id_idx on booking.payments (booking_id);

-- `updated_at` is the row version the lifecycle triggers key their occurrences on, so it
-- must move on every real change even when the application forgets to set it.
create function booking.touch_updated_at() returns trigger
language plpgsql as $$
begin
    if new.updated_at is not distinct from old.updated_at then
        new.updated_at := now();
    end if;
    return new;
end
$$;

create trigger bookings_touch_updated_at
    before update on booking.bookings
    for each row when (old.* is distinct from new.*)
    execute function booking.touch_updated_at();

create trigger payments_touch_updated_at
    before update on booking.payments
    for each row when (old.* is distinct from new.*)
    execute function booking.touch_updated_at();


-- ===========================================================================================
-- 2. Queue
-- ===========================================================================================
--
-- One row of pgnotify.notifications is one delivery of one event on one channel.
-- Its life: pending -> sending (claimed under a lease) -> sent | pending (retry later)
-- | failed (dead letter) | skipped; pending -> cancelled when the booking is cancelled.

create schema if not exists pgnotify;

-- The one list of what pgnotify sends and over what. Every other table, function and the
-- daemon refer to these rows: adding a kind is one INSERT here (plus its routes) and one
-- template folder per locale; the daemon reads both lists at start and refuses to run
-- when a kind has no templates or a channel has no way to be rendered.
create table pgnotify.kinds (
    kind        text primary key check (kind ~ '^[a-z][a-z0-9_]{0,62}$'),
    description text not null
);
insert into pgnotify.kinds (kind, description) values
    ('booking_confirmed',   'a booking became confirmed'),
    ('payment_confirmed',   'a payment succeeded'),
    ('payment_failed',      'a payment failed'),
    ('booking_cancelled',   'a confirmed booking was cancelled'),
    ('booking_rescheduled', 'a confirmed booking moved to another time'),
    ('reminder_24h',        'reminder, by default 24 hours before the appointment'),
    ('reminder_2h',         'reminder, by default 2 hours before the appointment');

create table pgnotify.channels (
    channel     text primary key check (channel ~ '^[a-z][a-z0-9_]{0,62}$'),
    description text not null
);
insert into pgnotify.channels (channel, description) values
    ('email', 'SMTP (or .eml files in the outbox), HTML with a plain-text part'),
    ('sms',   'Twilio (or sms.jsonl in the outbox)'),
    ('inapp', 'a row in pgnotify.inbox');

-- Which kinds go to which channels. A row with shop_id null is the default; a row for a
-- shop overrides the default for that (kind, channel), e.g. enabled = false to mute it.
create table pgnotify.routes (
    shop_id uuid references booking.shops (id) on delete cascade,
    kind    text not null references pgnotify.kinds (kind),
    channel text not null references pgnotify.channels (channel),
    enabled boolean not null default true
);
create unique index routes_default_key on pgnotify.routes (kind, channel) where shop_id is null;
create unique index routes_shop_key on pgnotify.routes (shop_id, kind, channel)
    where shop_id is not null;

insert into pgnotify.routes (kind, channel)
select k, c
from unnest(array['booking_confirmed', 'payment_confirmed', 'payment_failed',
                  'booking_cancelled', 'booking_rescheduled']) as k,
     unnest(array['email', 'sms', 'inapp']) as c
union all select 'reminder_24h', 'email'
union all select 'reminder_24h', 'sms'
union all select 'reminder_2h', 'sms';

-- How long before `starts_at` each reminder is due. Same override scheme as routes.
create table pgnotify.reminder_rules (
    shop_id      uuid references booking.shops (id) on delete cascade,
    kind         text not null references pgnotify.kinds (kind),
    before_start interval not null check (before_start > interval '0'),
    enabled      boolean not null default true
);
create unique index reminder_rules_default_key on pgnotify.reminder_rules (kind)
    where shop_id is null;
create unique index reminder_rules_shop_key on pgnotify.reminder_rules (shop_id, kind)
    where shop_id is not null;

insert into pgnotify.reminder_rules (kind, before_start) values
    ('reminder_24h', interval '24 hours'),
    ('reminder_2h', interval '2 hours');

-- A customer who does not want a channel. Honoured at enqueue time by the triggers
-- (the row is queued as `skipped`), and written by the daemon when Twilio reports STOP.
create table pgnotify.opt_outs (
    customer_id uuid not null references booking.customers (id) on delete cascade,
    channel     text not null references pgnotify.channels (channel),
    reason      text,
    created_at  timestamptz not null default now(),
    primary key (customer_id, channel)
);

create table pgnotify.notifications (
    id          bigint generated by default as identity primary key,
    -- Kind and channel come from pgnotify.routes (whose foreign keys check them) or from
    -- notify_booking (which checks them against pgnotify.kinds and pgnotify.channels).
    -- No foreign keys here: the insert is the hot path of every trigger.
    kind        text not null,
    channel     text not null,
    -- No foreign keys to the app's rows either: the queue is a record that outlives the app's rows, and must never
    -- block or cascade the app's DELETEs. A vanished booking is skipped at send time.
    booking_id  uuid,
    payment_id  uuid,
    customer_id uuid,
    shop_id     uuid,
    recipient   text,
    status      text not null default 'pending'
        check (status in ('pending', 'sending', 'sent', 'failed', 'cancelled', 'skipped')),
    run_at      timestamptz not null default now(),
    -- What makes this delivery unique for its subject: the booking version for events,
    -- the appointment time for reminders, a fresh uuid for manual notifications.
    occurrence  text not null,
    attempts    int  not null default 0 check (attempts >= 0),
    last_error  text,
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now(),
    sent_at     timestamptz,
    provider_id text,
    claimed_by  text,
    lease_until timestamptz,
    check (booking_id is not null or payment_id is not null),
    check (status <> 'sending' or lease_until is not null)
) with (
    -- Each row is updated about three times (claim, outcome, purge): vacuum early so the
    -- claim's partial index stays small and dead tuples do not pile up under bursts.
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 1
);

-- Every claim and every outcome changes `status`, so each update writes a new entry into
-- every index of the queue: an index earns its place only if something reads it. There is
-- none on customer_id (nothing the daemon or the triggers run reads one; a customer's
-- history is found through their bookings), and `lease_until`, which changes on every
-- claim, is in no index.

-- The claim reads only this: due pending rows in order. Partial, so finished history
-- never enters it.
create index notifications_pending_run_at_idx on pgnotify.notifications (run_at, id)
    where status = 'pending';

-- Expired leases are found through this small partial index (only in-flight rows).
create index notifications_sending_idx on pgnotify.notifications (id)
    where status = 'sending';

-- The dedupe key: one delivery per (subject, kind, channel, occurrence). Cancelled rows
-- do not count, so a booking cancelled and confirmed again is reminded again.
create unique index notifications_dedupe_key on pgnotify.notifications
    (coalesce(payment_id, booking_id), kind, channel, occurrence)
    where status <> 'cancelled';

-- Cancelling and rescheduling find a booking's reminders; operators look up a history.
create index notifications_booking_id_idx on pgnotify.notifications (booking_id);

-- Purge and the dead-letter view scan finished rows by age.
create index notifications_finished_idx on pgnotify.notifications (updated_at)
    where status in ('sent', 'failed', 'cancelled', 'skipped');

-- The in-app channel's messages, which the application reads.
create table pgnotify.inbox (
    id              bigint generated by default as identity primary key,
    customer_id     uuid,
    user_id         uuid not null,
    -- Unique: the in-app delivery is exactly once even if a stale worker retries it.
    notification_id bigint unique,
    kind            text not null,
    title           text not null,
    body            text not null,
    data            jsonb not null default '{}'::jsonb,
    created_at      timestamptz not null default now(),
    read_at         timestamptz
);
create index inbox_user_id_created_at_idx on pgnotify.inbox (user_id, created_at desc);


-- ===========================================================================================
-- 3. Lifecycle
-- ===========================================================================================
--
-- Triggers on booking.bookings and booking.payments decide which notifications a change
-- causes and when; a trigger on the queue wakes the daemon. Every rule of CONTRACT.md §2
-- lives in this section; the daemon never re-derives one.
--
-- The booking triggers are statement-level with transition tables, so a 10,000-row
-- INSERT runs each rule once as a set operation instead of 10,000 times.

-- An event some row change causes; `enqueue` fans it out to channels.
create type pgnotify.event as (
    booking_id uuid,
    payment_id uuid,
    kind       text,
    occurrence text,
    run_at     timestamptz
);

-- What changed in one booking row, as the update trigger sees it.
create type pgnotify.booking_change as (
    id            uuid,
    old_status    text,
    new_status    text,
    old_starts_at timestamptz,
    new_starts_at timestamptz,
    version       timestamptz
);

-- Occurrence keys (see notifications_dedupe_key). Readable, because operators see them.
create function pgnotify.version_key(ts timestamptz) returns text
language sql immutable parallel safe
as $$ select 'version:' || to_char(ts at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') $$;

create function pgnotify.starts_key(ts timestamptz) returns text
language sql immutable parallel safe
as $$ select 'starts:' || to_char(ts at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') $$;

-- The address a channel delivers to, resolved from the customer at enqueue time.
create function pgnotify.recipient_of(channel text, email text, phone text, user_id uuid)
returns text
language sql immutable parallel safe
as $$
    select case channel when 'email' then btrim(email)
                        when 'sms' then btrim(phone)
                        when 'inapp' then user_id::text end
$$;

-- Why a channel cannot reach this customer, or null when it can.
create function pgnotify.recipient_problem(channel text, email text, phone text, user_id uuid)
returns text
language sql immutable parallel safe
as $$
select case
    when channel = 'email' and nullif(btrim(email), '') is null
        then 'customer has no email address'
    when channel = 'email' and btrim(email) !~ '^[^@\s<>(),;:"\[\]\\]+@[^@\s<>(),;:"\[\]\\]+\.[^@\s<>(),;:"\[\]\\]+$'
        then 'customer email is not a valid address'
    when channel = 'sms' and nullif(btrim(phone), '') is null
        then 'customer has no phone number'
    when channel = 'sms' and btrim(phone) !~ '^\+[1-9][0-9]{1,14}$'
        then 'customer phone is not in E.164 format (+ and up to 15 digits)'
    when channel = 'inapp' and user_id is null
        then 'customer has no user_id for in-app messages'
end
$$;

-- Fans events out to their channels and queues them: routing (the shop's rows over the
-- defaults, unless `p_channels` names them), recipients, opt-outs, and the past-reminder
-- rule. Duplicates of an existing occurrence are dropped by the dedupe key.
--
-- PL/pgSQL, not SQL: an SQL-language function is planned again on every call, PL/pgSQL
-- caches its plans, and for a one-booking INSERT (the common case) planning dominated the
-- triggers. `work_mem`: a big INSERT fans out to many queue rows, and the planner cannot
-- know how many events an array holds; the hash joins get room so they do not spill.
create function pgnotify.enqueue(
    p_events   pgnotify.event[],
    p_channels text[] default null,
    p_manual   boolean default false
) returns setof bigint
language plpgsql volatile
set work_mem = '64MB'
as $body$
begin
    return query
    with ev as (
        select e.booking_id, e.payment_id, e.kind, e.occurrence, e.run_at,
               b.shop_id, b.customer_id, c.email, c.phone, c.user_id
        from unnest(p_events) as e
        join booking.bookings b on b.id = e.booking_id
        join booking.customers c on c.id = b.customer_id
    ),
    shops as (
        select distinct shop_id from ev
    ),
    routes as (
        select distinct on (s.shop_id, r.kind, r.channel)
               s.shop_id, r.kind, r.channel, r.enabled
        from shops s
        join pgnotify.routes r on r.shop_id is null or r.shop_id = s.shop_id
        order by s.shop_id, r.kind, r.channel, r.shop_id nulls last
    ),
    targets as (
        select ev.*, r.channel
        from ev join routes r on r.shop_id = ev.shop_id and r.kind = ev.kind
        where p_channels is null and r.enabled
        union all
        select ev.*, ch.channel
        from ev cross join unnest(p_channels) as ch (channel)
        where p_channels is not null
    ),
    resolved as (
        select t.*,
               pgnotify.recipient_of(t.channel, t.email, t.phone, t.user_id) as recipient,
               case
                   when o.customer_id is not null
                       then 'customer opted out of ' || t.channel
                           || coalesce(' (' || o.reason || ')', '')
                   else pgnotify.recipient_problem(t.channel, t.email, t.phone, t.user_id)
               end as problem
        from targets t
        left join pgnotify.opt_outs o
               on o.customer_id = t.customer_id and o.channel = t.channel
    )
    insert into pgnotify.notifications as n
        (kind, channel, booking_id, payment_id, customer_id, shop_id, recipient,
         status, run_at, occurrence, last_error)
    select kind, channel, booking_id, payment_id, customer_id, shop_id, recipient,
           case when problem is not null then 'skipped'
                when not p_manual and kind in ('reminder_24h', 'reminder_2h') and run_at <= now()
                    then 'skipped'
                else 'pending' end,
           run_at, occurrence,
           case when problem is not null then problem
                when not p_manual and kind in ('reminder_24h', 'reminder_2h') and run_at <= now()
                    then 'reminder due time already past when it was scheduled'
           end
    from resolved
    on conflict do nothing
    returning n.id;
end
$body$;

-- The reminders of confirmed bookings, at their exact offsets (shop rules over defaults).
-- PL/pgSQL for its cached plans, as `enqueue`.
create function pgnotify.reminder_events(p_booking_ids uuid[])
returns setof pgnotify.event
language plpgsql stable
as $body$
begin
    return query
    with b as (
        select id, shop_id, starts_at
        from booking.bookings
        where id = any (p_booking_ids) and status = 'confirmed'
    ),
    rules as (
        select distinct on (s.shop_id, r.kind) s.shop_id, r.kind, r.before_start, r.enabled
        from (select distinct shop_id from b) s
        join pgnotify.reminder_rules r on r.shop_id is null or r.shop_id = s.shop_id
        order by s.shop_id, r.kind, r.shop_id nulls last
    )
    select b.id, null::uuid, rules.kind, pgnotify.starts_key(b.starts_at),
           b.starts_at - rules.before_start
    from b join rules on rules.shop_id = b.shop_id
    where rules.enabled;
end
$body$;

create function pgnotify.on_bookings_inserted() returns trigger
language plpgsql
as $$
begin
    perform pgnotify.enqueue(array(
        select row(n.id, null, 'booking_confirmed', pgnotify.version_key(n.updated_at), now())
                   ::pgnotify.event
        from new_rows n
        where n.status = 'confirmed'
        union all
        select e from pgnotify.reminder_events(array(
            select n.id from new_rows n where n.status = 'confirmed')) e
    ));
    return null;
end
$$;

create function pgnotify.on_bookings_updated() returns trigger
language plpgsql
as $$
declare
    changes pgnotify.booking_change[];
begin
    -- Only the columns that matter: status and starts_at. Anything else changes nothing.
    changes := array(
        select row(n.id, o.status, n.status, o.starts_at, n.starts_at, n.updated_at)
                   ::pgnotify.booking_change
        from new_rows n join old_rows o on o.id = n.id
        where o.status is distinct from n.status or o.starts_at is distinct from n.starts_at);
    if cardinality(changes) = 0 then
        return null;
    end if;

    -- A booking that leaves `confirmed` keeps no pending reminder.
    update pgnotify.notifications q
       set status = 'cancelled', last_error = 'booking is now ' || c.new_status,
           updated_at = now()
      from unnest(changes) c
     where q.booking_id = c.id and q.status = 'pending'
       and q.kind in ('reminder_24h', 'reminder_2h')
       and c.old_status = 'confirmed' and c.new_status <> 'confirmed';

    -- A confirmed booking that moves takes its pending reminders along (to `skipped` if
    -- the new due time is already past), unless one for the new time exists already.
    update pgnotify.notifications q
       set run_at = e.run_at, occurrence = e.occurrence,
           status = case when e.run_at <= now() then 'skipped' else 'pending' end,
           last_error = case when e.run_at <= now()
                             then 'reminder due time already past after reschedule' end,
           updated_at = now()
      from pgnotify.reminder_events(array(
               select c.id from unnest(changes) c
               where c.old_status = 'confirmed' and c.new_status = 'confirmed')) e
     where q.booking_id = e.booking_id and q.kind = e.kind and q.status = 'pending'
       and q.occurrence <> e.occurrence
       and not exists (
           select 1 from pgnotify.notifications d
           where coalesce(d.payment_id, d.booking_id) = e.booking_id and d.kind = q.kind
             and d.channel = q.channel and d.occurrence = e.occurrence
             and d.status <> 'cancelled');

    -- Whatever could not move (its rule was disabled, or the new time is taken) stops.
    update pgnotify.notifications q
       set status = 'cancelled', last_error = 'booking rescheduled', updated_at = now()
      from unnest(changes) c
     where q.booking_id = c.id and q.status = 'pending'
       and q.kind in ('reminder_24h', 'reminder_2h')
       and c.old_status = 'confirmed' and c.new_status = 'confirmed'
       and q.occurrence <> pgnotify.starts_key(c.new_starts_at);

    perform pgnotify.enqueue(array(
        select row(c.id, null,
                   case when c.new_status = 'confirmed' and c.old_status <> 'confirmed'
                            then 'booking_confirmed'
                        when c.new_status = 'cancelled' and c.old_status = 'confirmed'
                            then 'booking_cancelled'
                        else 'booking_rescheduled' end,
                   pgnotify.version_key(c.version), now())::pgnotify.event
        from unnest(changes) c
        where (c.new_status = 'confirmed' and c.old_status <> 'confirmed')
           or (c.new_status = 'cancelled' and c.old_status = 'confirmed')
           or (c.new_status = 'confirmed' and c.old_status = 'confirmed'
               and c.new_starts_at is distinct from c.old_starts_at)
        union all
        -- New reminders for newly confirmed and moved bookings; moved rows already hold
        -- the new occurrence, so the dedupe key drops their twins.
        select e from pgnotify.reminder_events(array(
            select c.id from unnest(changes) c
            where c.new_status = 'confirmed'
              and (c.old_status <> 'confirmed' or c.new_starts_at is distinct from c.old_starts_at))) e
    ));
    return null;
end
$$;

create function pgnotify.on_payments_changed() returns trigger
language plpgsql
as $$
begin
    if tg_op = 'INSERT' then
        perform pgnotify.enqueue(array(
            select row(n.booking_id, n.id,
                       case n.status when 'succeeded' then 'payment_confirmed'
                                     else 'payment_failed' end,
                       pgnotify.version_key(n.updated_at), now())::pgnotify.event
            from new_rows n
            where n.status in ('succeeded', 'failed')));
    else
        perform pgnotify.enqueue(array(
            select row(n.booking_id, n.id,
                       case n.status when 'succeeded' then 'payment_confirmed'
                                     else 'payment_failed' end,
                       pgnotify.version_key(n.updated_at), now())::pgnotify.event
            from new_rows n join old_rows o on o.id = n.id
            where n.status in ('succeeded', 'failed') and n.status is distinct from o.status));
    end if;
    return null;
end
$$;

create trigger bookings_lifecycle_insert
    after insert on booking.bookings
    referencing new table as new_rows
    for each statement execute function pgnotify.on_bookings_inserted();

create trigger bookings_lifecycle_update
    after update on booking.bookings
    referencing old table as old_rows new table as new_rows
    for each statement execute function pgnotify.on_bookings_updated();

create trigger payments_lifecycle_insert
    after insert on booking.payments
    referencing new table as new_rows
    for each statement execute function pgnotify.on_payments_changed();

create trigger payments_lifecycle_update
    after update on booking.payments
    referencing old table as old_rows new table as new_rows
    for each statement execute function pgnotify.on_payments_changed();

-- Wake the daemon. One constant payload on one channel: Postgres folds a transaction's
-- identical notifications into one, and the commit-time lock that NOTIFY takes is held
-- once per transaction, not once per row. The daemon re-reads what is due on each wake-up.
create function pgnotify.wake() returns trigger
language plpgsql
as $$
begin
    perform pg_notify('pgnotify', 'wake');
    return null;
end
$$;

-- Every insert statement wakes, pending rows or not: capturing the inserted rows in a
-- transition table just to ask "is one of them pending?" cost more than a spurious
-- wake-up, which costs the daemon one cheap query.
create trigger notifications_wake_insert
    after insert on pgnotify.notifications
    for each statement execute function pgnotify.wake();

-- Updates are the daemon's hot path (every claim and every outcome), so no transition
-- table here either: a row-level trigger whose WHEN clause the executor evaluates inline
-- fires only for rows going (back) to pending or moving in time.
create trigger notifications_wake_update
    after update on pgnotify.notifications
    for each row
    when (new.status = 'pending'
          and (old.status <> 'pending' or old.run_at is distinct from new.run_at))
    execute function pgnotify.wake();


-- ===========================================================================================
-- 4. Daemon support
-- ===========================================================================================

-- Why a claimed notification must no longer be sent, or null. The send-time re-check of
-- the lifecycle rules: a reminder whose booking was cancelled or moved after a race left
-- it pending is skipped, never sent. A vanished booking is skipped too.
create function pgnotify.stale_reason(
    p_kind text, p_occurrence text, p_booking_status text, p_starts_at timestamptz
) returns text
language sql immutable parallel safe
as $$
    select case
        when p_booking_status is null then 'booking no longer exists'
        when p_kind in ('reminder_24h', 'reminder_2h') and p_booking_status <> 'confirmed'
            then 'booking is ' || p_booking_status || ' now; reminder not sent'
        when p_kind in ('reminder_24h', 'reminder_2h')
             and p_occurrence not like 'manual:%'
             and p_occurrence <> pgnotify.starts_key(p_starts_at)
            then 'booking was rescheduled; reminder not sent'
    end
$$;

-- The rendering context of a whole claimed batch, one row per distinct (booking,
-- payment), as the templates receive it; the claim joins it once per batch.
--
-- PL/pgSQL with a generic plan: as an SQL function it was not inlined into the claim (its
-- arguments are sub-selects), so its six-table join was planned on every claim, ten times
-- the cost of the bare claim. The cached generic plan fits, since the query is always a
-- handful of primary-key lookups. `json` rather than `jsonb`: the daemon only reads it,
-- and text JSON is cheaper to build.
create function pgnotify.render_contexts(p_booking_ids uuid[], p_payment_ids uuid[])
returns table (booking_id uuid, payment_id uuid, booking_status text,
               starts_at timestamptz, context json)
language plpgsql stable
set plan_cache_mode = force_generic_plan
as $body$
#variable_conflict use_column
begin
    return query
    select k.booking_id, k.payment_id, b.status, b.starts_at,
           json_build_object(
               'booking', json_build_object(
                   'id', b.id, 'starts_at', b.starts_at,
                   'ends_at', b.starts_at + make_interval(mins => b.duration_minutes),
                   'duration_minutes', b.duration_minutes, 'total_cents', b.total_cents,
                   'currency', b.currency, 'status', b.status,
                   'cancellation_reason', b.cancellation_reason,
                   -- ICS SEQUENCE must grow with each change of the event: the version does.
                   'sequence', floor(extract(epoch from b.updated_at))::bigint),
               'shop', json_build_object(
                   'id', s.id, 'name', s.name, 'timezone', s.timezone, 'email', s.email,
                   'phone', s.phone, 'address', s.address, 'locale', s.locale),
               'staff', json_build_object('id', st.id, 'name', st.name),
               'service', json_build_object(
                   'id', sv.id, 'name', sv.name, 'duration_minutes', sv.duration_minutes,
                   'price_cents', sv.price_cents, 'currency', sv.currency),
               'customer', json_build_object(
                   'id', c.id, 'name', c.name, 'email', c.email, 'phone', c.phone,
                   'user_id', c.user_id, 'locale', c.locale, 'timezone', c.timezone),
               'payment', case when p.id is not null then json_build_object(
                   'id', p.id, 'amount_cents', p.amount_cents, 'currency', p.currency,
                   'status', p.status, 'provider', p.provider, 'provider_ref', p.provider_ref,
                   'failure_reason', p.failure_reason) end)
    from (select distinct u.booking_id, u.payment_id
          from unnest(p_booking_ids, p_payment_ids) as u (booking_id, payment_id)) k
    join booking.bookings b on b.id = k.booking_id
    join booking.shops s on s.id = b.shop_id
    join booking.staff st on st.id = b.staff_id
    join booking.services sv on sv.id = b.service_id
    join booking.customers c on c.id = b.customer_id
    left join booking.payments p on p.id = k.payment_id;
end
$body$;


-- ===========================================================================================
-- 5. Operator API
-- ===========================================================================================

-- Counts by kind, channel and status; for pending rows, the oldest one already due
-- (a growing value means the daemon is behind or down) and the next one to come.
create view pgnotify.status as
select kind,
       channel,
       status,
       count(*)                                                      as count,
       min(run_at) filter (where status = 'pending' and run_at <= now()) as oldest_due_run_at,
       min(run_at) filter (where status = 'pending' and run_at > now())  as next_run_at,
       max(attempts)                                                 as max_attempts,
       max(updated_at)                                               as last_change_at
from pgnotify.notifications
group by kind, channel, status
order by kind, channel, status;

comment on view pgnotify.status is
    'Notifications by kind, channel and status, with the oldest due run_at of what is pending.';

-- The dead letters: what failed for good, newest first, with why.
create view pgnotify.dead_letters as
select id, kind, channel, booking_id, payment_id, customer_id, recipient, attempts,
       last_error, run_at, created_at, updated_at
from pgnotify.notifications
where status = 'failed'
order by updated_at desc, id desc;

comment on view pgnotify.dead_letters is
    'Failed notifications (retries exhausted or a permanent error) and their last error.';

-- Put a failed or skipped row back in the queue, due now, with a fresh attempt budget.
-- The recipient is resolved again, so fixing a customer's email and retrying works.
create function pgnotify.retry(p_id bigint) returns boolean
language sql volatile
as $$
    with requeued as (
        update pgnotify.notifications q
           set status = 'pending', run_at = now(), attempts = 0, updated_at = now(),
               claimed_by = null, lease_until = null, sent_at = null,
               recipient = coalesce(
                   (select pgnotify.recipient_of(q.channel, c.email, c.phone, c.user_id)
                    from booking.customers c where c.id = q.customer_id),
                   q.recipient),
               last_error = 'retried by operator; was: ' || coalesce(q.last_error, q.status)
         where q.id = p_id and q.status in ('failed', 'skipped')
        returning 1
    )
    select exists (select 1 from requeued)
$$;

comment on function pgnotify.retry(bigint) is
    'Re-queue a failed or skipped notification, due now; true if it did.';

-- Queue a notification by hand. Honours routing when p_channels is null. A manual call is
-- its own occurrence, never suppressed as a duplicate of an automatic notification.
create function pgnotify.notify_booking(
    p_booking_id uuid,
    p_kind       text,
    p_channels   text[] default null,
    p_run_at     timestamptz default null
) returns bigint[]
language plpgsql volatile
as $$
declare
    v_payment_id uuid;
    v_bad        text;
begin
    if p_kind is null or not exists (select 1 from pgnotify.kinds where kind = p_kind) then
        raise exception 'pgnotify.notify_booking: unknown kind %', p_kind
            using errcode = 'invalid_parameter_value';
    end if;
    select coalesce(c, 'null') into v_bad from unnest(p_channels) c
    where c is null or not exists (select 1 from pgnotify.channels ch where ch.channel = c)
    limit 1;
    if v_bad is not null then
        raise exception 'pgnotify.notify_booking: unknown channel %', v_bad
            using errcode = 'invalid_parameter_value';
    end if;
    if not exists (select 1 from booking.bookings where id = p_booking_id) then
        raise exception 'pgnotify.notify_booking: booking % not found', p_booking_id
            using errcode = 'no_data_found';
    end if;
    if p_kind in ('payment_confirmed', 'payment_failed') then
        select id into v_payment_id from booking.payments
        where booking_id = p_booking_id order by updated_at desc, created_at desc limit 1;
    end if;
    return array(
        select pgnotify.enqueue(
            array[row(p_booking_id, v_payment_id, p_kind,
                      'manual:' || gen_random_uuid()::text,
                      coalesce(p_run_at, now()))::pgnotify.event],
            p_channels, true));
end
$$;

comment on function pgnotify.notify_booking(uuid, text, text[], timestamptz) is
    'Queue a notification by hand; returns the ids of the rows it queued.';

-- Delete finished rows older than p_older_than, at most p_limit per call so that a large
-- backlog is removed in short transactions. Returns how many rows it deleted. The daemon
-- calls it for retention.
create function pgnotify.purge(p_older_than interval, p_limit int default 5000) returns bigint
language sql volatile
as $$
    with doomed as (
        select id from pgnotify.notifications
        where status in ('sent', 'cancelled', 'skipped')
          and updated_at < now() - p_older_than
        limit p_limit
    ), gone as (
        delete from pgnotify.notifications q using doomed where q.id = doomed.id returning 1
    )
    select count(*) from gone
$$;

comment on function pgnotify.purge(interval, int) is
    'Delete sent, cancelled and skipped notifications older than the interval, in batches;'
    ' never failed ones (dead letters: CONTRACT §5). Returns the count.';


-- ===========================================================================================
-- 6. Roles and grants
-- ===========================================================================================
--
-- Least privilege. `pgnotify_daemon` holds exactly what `pgnotify run` needs: read the
-- booking model, claim and record notifications, write the inbox and opt-outs, purge.
-- It cannot log in; grant it to a login role of your choice:
--     create role pgnotify_app login password '…' in role pgnotify_daemon;
--
-- Creating a role needs CREATEROLE (the master user of RDS, Cloud SQL and Azure has it).
-- Without it this migration only explains; a DBA can create the role later and call
-- `select pgnotify.grant_daemon_privileges();` (idempotent, also after upgrades).

create function pgnotify.grant_daemon_privileges() returns void
language plpgsql
as $$
begin
    grant usage on schema booking, pgnotify to pgnotify_daemon;
    grant select on booking.shops, booking.staff, booking.services, booking.customers,
                    booking.bookings, booking.payments to pgnotify_daemon;
    -- claim (select ... for update, update), record, rescue, release, purge (delete)
    grant select, update, delete on pgnotify.notifications to pgnotify_daemon;
    grant select, insert on pgnotify.inbox to pgnotify_daemon;
    grant select, insert on pgnotify.opt_outs to pgnotify_daemon;
    grant select on pgnotify.kinds, pgnotify.channels, pgnotify.routes,
                    pgnotify.reminder_rules, pgnotify.schema_migrations,
                    pgnotify.status, pgnotify.dead_letters to pgnotify_daemon;
end
$$;

do $$
begin
    if not exists (select 1 from pg_roles where rolname = 'pgnotify_daemon') then
        begin
            create role pgnotify_daemon nologin;
        exception when insufficient_privilege then
            raise notice 'pgnotify: cannot create role pgnotify_daemon (needs CREATEROLE); '
                         'create it, then run: select pgnotify.grant_daemon_privileges();';
            return;
        end;
    end if;
    perform pgnotify.grant_daemon_privileges();
end
$$;
