-- 001: the baseline schema. Every table, view, function and grant pgnotify needs, each
-- defined once, in its current form. Later changes are new numbered files.
--
--   1. Booking model     schema `booking`, as CONTRACT.md §1 fixes it
--   2. Queue             kinds, routing and reminder rules, opt-outs, notifications, inbox
--   3. Lifecycle         which row changes cause which notifications (CONTRACT.md §2, §6),
--                        the ICS SEQUENCE of each booking, and the wake-up of the daemon
--   4. Daemon support    what the daemon asks of the database at send time
--   5. Operator API      what operators use from psql (CONTRACT.md §3), retention
--   6. Roles and grants  `pgnotify_daemon` and `pgnotify_client`, least privilege (§5)
--
-- The functions that write pgnotify's tables run as their owner (SECURITY DEFINER, with
-- `search_path` pinned and EXECUTE revoked from public): the application needs rights on
-- its own `booking` tables only. See section 3.



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
    -- Branding of the shipped HTML layout (header bar, buttons): `#rrggbb` or null for the
    -- default. The shop's own table, so a bad value is refused where it is written rather
    -- than failing a message; the daemon validates both again before use.
    brand_color text check (brand_color ~ '^#[0-9A-Fa-f]{6}$'),
    -- Shown as the header's image (fixed size, the shop's name as alt text) when https.
    logo_url    text,
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
    -- When the customer confirmed their attendance by replying C (pgnotify, section 2:
    -- inbound messages); null until then.
    customer_confirmed_at timestamptz,
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

-- A customer's C (`customer_confirmed_at`, set by the reply trigger, section 3) confirms
-- one appointment: when the booking moves or changes status, it no longer holds, so emails
-- about the new time do not claim it and the customer's next C counts (and tells the shop)
-- again. Unless the same UPDATE sets it itself.
create function booking.forget_stale_confirmation() returns trigger
language plpgsql as $$
begin
    if new.customer_confirmed_at is not distinct from old.customer_confirmed_at then
        new.customer_confirmed_at := null;
    end if;
    return new;
end
$$;

create trigger bookings_forget_stale_confirmation
    before update on booking.bookings
    for each row
    when (old.customer_confirmed_at is not null
          and (old.starts_at is distinct from new.starts_at
               or old.status is distinct from new.status))
    execute function booking.forget_stale_confirmation();


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
--
-- `about_payment`: which kinds are about one payment rather than the booking as a whole.
-- `notify_booking` attaches the booking's latest payment to those (and refuses a booking
-- without one); as a column, a new payment kind is one UPDATE, not a new function body.
--
-- `audience`: who reads it. A `customer` kind goes to the booking's customer (opt-outs
-- apply); a `shop` kind to the shop's own `email` and `phone` (there is no in-app inbox for
-- a shop, and a customer's opt-out is not the shop's). Both `enqueue` and the claim
-- resolve the recipient by it.
--
-- `same_event_as`: a kind the lifecycle queues for every event of another kind, keyed by
-- the same occurrence. The shop's alerts follow the customer's messages this way, so the
-- rules that detect a confirmation, a cancellation or a failed payment exist once
-- (section 3). Only for the triggers' events: a manual `notify_booking` queues the kind it
-- names and nothing else.
create table pgnotify.kinds (
    kind          text primary key check (kind ~ '^[a-z][a-z0-9_]{0,62}$'),
    description   text not null,
    about_payment boolean not null default false,
    audience      text not null default 'customer' check (audience in ('customer', 'shop')),
    same_event_as text references pgnotify.kinds (kind)
);

comment on column pgnotify.kinds.about_payment is
    'True for kinds about one payment: notify_booking attaches the booking''s latest payment.';
comment on column pgnotify.kinds.audience is
    'customer: sent to the booking''s customer; shop: to booking.shops.email / phone.';
comment on column pgnotify.kinds.same_event_as is
    'The lifecycle queues this kind wherever it queues that one (e.g. the shop''s alerts).';

insert into pgnotify.kinds (kind, description, about_payment, audience, same_event_as) values
    ('booking_confirmed',   'a booking became confirmed',                false, 'customer', null),
    ('payment_confirmed',   'a payment succeeded',                       true,  'customer', null),
    ('payment_failed',      'a payment failed',                          true,  'customer', null),
    ('payment_refunded',    'a payment was refunded',                    true,  'customer', null),
    ('booking_cancelled',   'a confirmed booking was cancelled',         false, 'customer', null),
    ('booking_rescheduled', 'a confirmed booking moved to another time', false, 'customer', null),
    ('reminder_24h',  'reminder, by default 24 hours before the appointment', false, 'customer', null),
    ('reminder_2h',   'reminder, by default 2 hours before the appointment',  false, 'customer', null),
    ('sms_help',      'the answer to a customer who replied HELP or INFO',    false, 'customer', null),
    ('shop_booking_confirmed', 'to the shop: a booking became confirmed',
        false, 'shop', 'booking_confirmed'),
    ('shop_booking_cancelled', 'to the shop: a confirmed booking was cancelled',
        false, 'shop', 'booking_cancelled'),
    ('shop_payment_failed',    'to the shop: a payment failed',
        true,  'shop', 'payment_failed'),
    ('shop_customer_confirmed', 'to the shop: the customer replied C to confirm',
        false, 'shop', null);

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
                  'payment_refunded', 'booking_cancelled', 'booking_rescheduled']) as k,
     unnest(array['email', 'sms', 'inapp']) as c
union all select 'reminder_24h', 'email'
union all select 'reminder_24h', 'sms'
union all select 'reminder_2h', 'sms'
union all select 'sms_help', 'sms'
-- The shop's alerts by email only; a shop row (or the default) adds `sms` to its phone.
union all select 'shop_booking_confirmed', 'email'
union all select 'shop_booking_cancelled', 'email'
union all select 'shop_payment_failed', 'email'
union all select 'shop_customer_confirmed', 'email';

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
-- (the row is queued as `skipped`) and again at send time by the claim. Written when the
-- customer replies STOP (`source` 'keyword', the inbound trigger below), by the daemon when
-- Twilio refuses a send with 21610 ('21610'), or by an operator (the default).
create table pgnotify.opt_outs (
    customer_id uuid not null references booking.customers (id) on delete cascade,
    channel     text not null references pgnotify.channels (channel),
    reason      text,
    source      text not null default 'operator'
        check (source in ('keyword', '21610', 'operator')),
    created_at  timestamptz not null default now(),
    primary key (customer_id, channel)
);

-- A phone number as replies and customers are compared: spaces, dashes, dots and
-- brackets dropped, a leading 00 read as +. Customers' numbers are E.164 by convention
-- only (section 1), and Twilio's `From` always is: both sides go through this.
create function pgnotify.e164(p_phone text) returns text
language sql immutable parallel safe
as $$
    select nullif(regexp_replace(regexp_replace(btrim(p_phone), '^00', '+'), '[^0-9+]', '', 'g'),
                  '')
$$;

comment on function pgnotify.e164(text) is
    'A phone number normalised for comparison: digits and a leading +, 00 read as +.';

-- A reply finds its customers through this.
create index customers_phone_e164_idx on booking.customers (pgnotify.e164(phone));

-- Replies from customers (CONTRACT.md §7). The application's SMS webhook inserts one row
-- per message; `pgnotify.on_inbound_message` acts on it at once (section 3) and records
-- `action`, `handled_at` and what it did in `detail`. `provider_id` is Twilio's
-- MessageSid: Twilio retries webhooks, so a second insert of a known one does nothing
-- (`pgnotify.skip_known_inbound`, or the application's `on conflict do nothing`).
create table pgnotify.inbound_messages (
    id           bigint generated by default as identity primary key,
    channel      text not null default 'sms' references pgnotify.channels (channel),
    from_address text not null,
    to_address   text,
    body         text not null,
    provider_id  text unique,
    received_at  timestamptz not null default now(),
    action       text check (action in ('opt_out', 'opt_in', 'help', 'confirm', 'none')),
    handled_at   timestamptz,
    detail       text
);

-- The conversation of one number, newest first (pgnotify.conversations).
create index inbound_messages_from_idx on pgnotify.inbound_messages
    (pgnotify.e164(from_address), received_at desc);

-- When reminder SMS may not arrive (CONTRACT.md §7): from `starts` to `ends` local time,
-- across midnight when `ends` < `starts`, in the customer's time zone, else the shop's.
-- The row with shop_id null is the default; a shop's row overrides it (`starts = ends`
-- switches quiet hours off for that shop). Applied by `pgnotify.held_reminder`.
create table pgnotify.quiet_hours (
    shop_id uuid references booking.shops (id) on delete cascade,
    starts  time not null,
    ends    time not null
);
create unique index quiet_hours_default_key on pgnotify.quiet_hours ((true)) where shop_id is null;
create unique index quiet_hours_shop_key on pgnotify.quiet_hours (shop_id)
    where shop_id is not null;

insert into pgnotify.quiet_hours (shop_id, starts, ends) values (null, '21:00', '08:00');

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
    -- The booking's version (pgnotify.booking_versions) when this invitation was queued,
    -- frozen here so that a retry sends the same ICS SEQUENCE; null for other rows.
    ics_sequence int,
    -- Why a reminder SMS is not due at its offset: quiet hours moved it before them or to
    -- their end, or skipped it (the reason then in `last_error`). Null otherwise.
    held_reason text check (held_reason in ('moved_before_quiet_hours',
                                            'moved_to_end_of_quiet_hours',
                                            'skipped_in_quiet_hours')),
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

-- The claims read only these: due pending rows in order, one index for the rows sent over
-- a network (claimed under a lease) and one for in-app rows (locked and written in one
-- transaction), so that neither claim walks past the other's backlog. Partial, so
-- finished history never enters them, and each pending row is in exactly one.
create index notifications_pending_run_at_idx on pgnotify.notifications (run_at, id)
    where status = 'pending' and channel <> 'inapp';
create index notifications_pending_inapp_idx on pgnotify.notifications (run_at, id)
    where status = 'pending' and channel = 'inapp';

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

-- Read messages are purged by age (`pgnotify.purge_inbox`) through this partial index.
create index inbox_read_created_at_idx on pgnotify.inbox (created_at) where read_at is not null;


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
--
-- One row's data never stops another (CONTRACT.md §5): no key, due time or recipient rule
-- here can fail the application's INSERT or UPDATE on an odd value (an infinite or extreme
-- timestamp, a malformed contact); such a row is queued `skipped` with the reason.
--
-- The functions that write the queue (`enqueue`, the trigger functions) are SECURITY
-- DEFINER: otherwise they run with the rights of whoever changes a booking, so an
-- application role would need rights on pgnotify's tables, and with them could mark rows
-- sent or redirect them. They run as the migrating role; `search_path` is pinned so that
-- nothing the caller creates (a function or operator in a schema of its own, a temporary
-- table) can stand in for a name in their bodies. Every name in those bodies is
-- schema-qualified (`pgnotify.`, `booking.`; built-ins are in pg_catalog).
--
-- Nobody calls these but the triggers, the other functions and the owner: EXECUTE is
-- revoked from public. Postgres checks EXECUTE on a trigger function when the trigger is
-- created, never when it fires, so the application's INSERT still runs them.
--
-- There is no `alter default privileges in schema pgnotify revoke execute on functions
-- from public`: per-schema default privileges only add to the global ones, so that
-- statement changes nothing (PostgreSQL's ALTER DEFAULT PRIVILEGES documents it), and the
-- global form would close every function the migrating role creates in the application's
-- schemas too. tests/sql/test_privileges.py finds every function that writes pgnotify's
-- tables instead and fails on one that is not SECURITY DEFINER, pinned and closed.

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

-- A timestamp as occurrence keys and reasons show it. `to_char` of an infinite timestamp
-- is null, so an infinite time is spelled out: a key must never be null (a booking
-- inserted with `updated_at = 'infinity'`, or confirmed with `starts_at = 'infinity'`,
-- would otherwise fail the application's own INSERT inside our trigger).
--
-- STABLE, not IMMUTABLE, here and in the two keys below: `to_char` is stable, and the
-- planner inlines an SQL function only when its body is no more volatile than declared.
-- Not inlined, each call set the function up again, and three calls per booking were
-- two fifths of a one-booking INSERT's trigger time.
create function pgnotify.time_key(ts timestamptz) returns text
language sql stable parallel safe
as $$
    select case when ts = 'infinity' then 'infinity'
                when ts = '-infinity' then '-infinity'
                else to_char(ts at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') end
$$;

comment on function pgnotify.time_key(timestamptz) is
    'A timestamp as occurrence keys and reasons show it: UTC, microseconds, or (-)infinity.';

-- Occurrence keys (see notifications_dedupe_key). Readable, because operators see them.
create function pgnotify.version_key(ts timestamptz) returns text
language sql stable parallel safe
as $$ select 'version:' || pgnotify.time_key(ts) $$;

create function pgnotify.starts_key(ts timestamptz) returns text
language sql stable parallel safe
as $$ select 'starts:' || pgnotify.time_key(ts) $$;

-- The address a channel delivers to, resolved from the customer at enqueue time.
create function pgnotify.recipient_of(channel text, email text, phone text, user_id uuid)
returns text
language sql immutable parallel safe
as $$
    select case channel when 'email' then btrim(email)
                        when 'sms' then btrim(phone)
                        when 'inapp' then user_id::text end
$$;

-- The one email rule, which the sender (`pgnotify/channels/mime.py`, `is_valid_address`)
-- applies too: tests/sql/test_email_rule.py feeds one corpus to both, so an address is
-- skipped with the reason when queued rather than failing at send time. An ASCII
-- dot-atom local part of at most 64 characters, `@`, letter-digit-hyphen labels of at
-- most 63 characters (no leading or trailing hyphen; international domains in their xn--
-- form), at most 254 characters in all. A domain without a dot (`noreply@localhost`) is
-- valid, as for SMTP. Null is not valid. The value is checked as given; callers trim.
--
-- Spelled for Postgres' regex engine, which runs a bounded repeat (`{0,61}`) as that many
-- copies of its states: the one-pattern form cost 3 µs per address, and the triggers
-- check one per email row. The same rule in cheap parts: the shape (dot-atoms, `@`,
-- dot-separated labels of letters, digits and hyphens), no label that starts or ends with
-- a hyphen (looked for in the domain only, `@` included, since a local part may hold
-- `.-`), and no label over 63 characters, which only a domain that long can hold.
create function pgnotify.is_valid_email(p_address text) returns boolean
language sql immutable parallel safe
as $$
    select coalesce(
        length(p_address) <= 254
        and position('@' in p_address) <= 65
        and p_address ~ '^[A-Za-z0-9!#$%&''*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&''*+/=?^_`{|}~-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*$'
        and substr(p_address, position('@' in p_address)) !~ '[@.]-|-(?:\.|$)'
        and (length(p_address) - position('@' in p_address) <= 63
             or substr(p_address, position('@' in p_address)) !~ '[^.@]{64}'),
        false)
$$;

comment on function pgnotify.is_valid_email(text) is
    'True for an address pgnotify sends to (the rule of mime.is_valid_address).';

-- Why a channel cannot reach this customer (or shop: `pgnotify.kinds.audience`), or null
-- when it can.
create function pgnotify.recipient_problem(
    channel text, email text, phone text, user_id uuid, audience text default 'customer'
) returns text
language sql immutable parallel safe
as $$
select case
    when channel = 'email' and nullif(btrim(email), '') is null
        then audience || ' has no email address'
    when channel = 'email' and not pgnotify.is_valid_email(btrim(email))
        then audience || ' email is not a valid address'
    when channel = 'sms' and nullif(btrim(phone), '') is null
        then audience || ' has no phone number'
    -- `+`, then up to 15 digits, the first not 0; the length apart, as `{1,14}` would cost
    -- the regex engine 14 copies of its states (see is_valid_email).
    when channel = 'sms' and (btrim(phone) !~ '^\+[1-9][0-9]+$' or length(btrim(phone)) > 16)
        then audience || ' phone is not in E.164 format (+ and up to 15 digits)'
    when channel = 'inapp' and user_id is null
        then audience || ' has no user_id for in-app messages'
end
$$;

-- A reminder's due time, `starts_at - before_start`, for the rare case where that
-- overflows (a start near the lowest timestamp, 4714 BC, or an operator's rule of many
-- millennia), which would fail the application's INSERT. The usual case is computed
-- inline (no subtransaction per row); only the rare one goes through this guard, whose
-- answer, the lowest timestamp, makes the reminder already past, so it is queued
-- `skipped` with that reason.
create function pgnotify.due_before(p_starts_at timestamptz, p_before interval)
returns timestamptz
language plpgsql stable parallel safe
as $$
begin
    return p_starts_at - p_before;
exception
    when data_exception then
        return timestamptz '4714-11-24 00:00+00 BC';
end
$$;

comment on function pgnotify.due_before(timestamptz, interval) is
    'starts_at - before, or the lowest timestamp when that is before it.';

-- Quiet hours (CONTRACT.md §7). Where a reminder SMS due at `p_due` goes, for an
-- appointment at `p_starts_at`, under quiet hours `p_quiet_starts`-`p_quiet_ends` (local
-- time in `p_zone`) and at `p_now`: a due time outside them stays; inside them it moves to
-- the latest moment before they start (one minute before, so a send a second late is
-- still outside) if that is after `p_now`; else to their end if that is at least 30
-- minutes before the appointment; else it is skipped, with the reason. Pure (the clock is
-- a parameter), so tests/sql/test_quiet_hours.py walks its edges, DST nights included:
-- local times are turned into instants by `at time zone`, which knows each night's length.
create type pgnotify.quiet_slot as (
    run_at      timestamptz,
    held_reason text,
    problem     text
);

create function pgnotify.quiet_slot(
    p_due timestamptz, p_starts_at timestamptz, p_zone text,
    p_quiet_starts time, p_quiet_ends time, p_now timestamptz
) returns pgnotify.quiet_slot
language plpgsql stable parallel safe
as $$
declare
    local_due timestamp;
    local_day date;
    quiet_from timestamptz;
    quiet_to timestamptz;
begin
    -- Outside years 1-200000 the local times below could overflow the timestamp range
    -- (and fail the application's INSERT): such a reminder is the past-reminder rule's or
    -- lies millennia ahead; quiet hours leave it alone.
    if p_quiet_starts is null or p_quiet_ends is null or p_quiet_starts = p_quiet_ends
       or p_zone is null or not isfinite(p_due) or not isfinite(p_starts_at)
       or p_due not between timestamptz '0001-01-02 00:00+00' and timestamptz '200000-01-01 00:00+00'
    then
        return (p_due, null, null)::pgnotify.quiet_slot;
    end if;
    local_due := p_due at time zone p_zone;
    local_day := local_due::date;
    if p_quiet_starts < p_quiet_ends then             -- e.g. 12:00-14:00, within one day
        if local_due::time < p_quiet_starts or local_due::time >= p_quiet_ends then
            return (p_due, null, null)::pgnotify.quiet_slot;
        end if;
        quiet_from := (local_day + p_quiet_starts) at time zone p_zone;
        quiet_to := (local_day + p_quiet_ends) at time zone p_zone;
    elsif local_due::time >= p_quiet_starts then      -- across midnight, due in the evening
        quiet_from := (local_day + p_quiet_starts) at time zone p_zone;
        quiet_to := (local_day + 1 + p_quiet_ends) at time zone p_zone;
    elsif local_due::time < p_quiet_ends then         -- across midnight, due in the morning
        quiet_from := (local_day - 1 + p_quiet_starts) at time zone p_zone;
        quiet_to := (local_day + p_quiet_ends) at time zone p_zone;
    else
        return (p_due, null, null)::pgnotify.quiet_slot;
    end if;
    if quiet_from - interval '1 minute' > p_now then
        return (quiet_from - interval '1 minute', 'moved_before_quiet_hours', null)
               ::pgnotify.quiet_slot;
    elsif quiet_to <= p_starts_at - interval '30 minutes' then
        return (quiet_to, 'moved_to_end_of_quiet_hours', null)::pgnotify.quiet_slot;
    end if;
    return (p_due, 'skipped_in_quiet_hours',
            'reminder due in quiet hours ' || to_char(p_quiet_starts, 'HH24:MI') || '-'
            || to_char(p_quiet_ends, 'HH24:MI') || ' (' || p_zone || '): the evening before'
            || ' is past and their end is less than 30 minutes before the appointment')
           ::pgnotify.quiet_slot;
end
$$;

comment on function pgnotify.quiet_slot(timestamptz, timestamptz, text, time, time,
                                         timestamptz) is
    'Where quiet hours put a reminder SMS: its run_at, why it moved, or why it is skipped.';

-- A time zone name the database knows, or null: the customer's and the shop's zones are
-- the application's data, and an unknown one must not fail its INSERT. PL/pgSQL for the
-- exception. STRICT, so a customer without a zone costs no call; an assignment, not
-- PERFORM, so the probe is evaluated as a simple expression rather than run through the
-- executor as a query.
create function pgnotify.known_zone(p_zone text) returns text
language plpgsql stable strict parallel safe
as $$
declare
    probe timestamp;
begin
    probe := now() at time zone p_zone;
    return p_zone;
exception
    when invalid_parameter_value or data_exception then
        return null;
end
$$;

-- Where quiet hours put one reminder SMS, when they move or skip it (no row otherwise):
-- the quiet hours of its shop (the shop's row over the default), in the customer's zone,
-- else the shop's, else UTC. A reminder already due, another kind or another channel
-- gets no row: the past-reminder rule owns the first. Called for each queue row by
-- `enqueue` and for each moved reminder by `on_bookings_updated`, with the booking's
-- start, shop and zones, which both callers have already read.
-- SQL, not PL/pgSQL: the planner inlines it into the caller's statement, whose plan the
-- caller caches; a one-booking INSERT pays `quiet_slot` and `known_zone` for its reminder
-- SMS only. The conditions on the channel, kind and due time sit under the LIMIT, where
-- the executor tests them once per row before anything else, and the slot is computed
-- once per row (OFFSET 0 keeps it a column: `(quiet_slot(…)).…` would call it once per
-- field).
create function pgnotify.held_reminder(
    p_channel text, p_kind text, p_run_at timestamptz, p_starts_at timestamptz,
    p_shop_id uuid, p_customer_zone text, p_shop_zone text
) returns table (run_at timestamptz, held_reason text, problem text)
language sql stable
as $body$
    select (x.slot).run_at, (x.slot).held_reason, (x.slot).problem
    from (select pgnotify.quiet_slot(
                     p_run_at, p_starts_at,
                     coalesce(pgnotify.known_zone(p_customer_zone),
                              pgnotify.known_zone(p_shop_zone), 'UTC'),
                     q.starts, q.ends, now()) as slot
          from (select q.starts, q.ends
                from pgnotify.quiet_hours q
                where (q.shop_id = p_shop_id or q.shop_id is null)
                  and p_channel = 'sms' and p_kind in ('reminder_24h', 'reminder_2h')
                  and p_run_at > now()
                order by q.shop_id nulls last
                limit 1) q
          offset 0) x
    where (x.slot).held_reason is not null
$body$;

comment on function pgnotify.held_reminder(text, text, timestamptz, timestamptz, uuid, text,
                                           text) is
    'Where quiet hours move or skip one reminder SMS (pgnotify.quiet_slot); no row otherwise.';

-- Fans events out to their channels and queues them: the kinds that follow each event
-- (`kinds.same_event_as`), routing (the shop's rows over the defaults, unless `p_channels`
-- names them), recipients (by `kinds.audience`), opt-outs, the past-reminder rule and
-- quiet hours for reminder SMS (never for a manual call). Duplicates of an existing
-- occurrence are dropped by the dedupe key. A row whose
-- due time is not finite (`notify_booking(…, p_run_at => 'infinity')`) is queued
-- `skipped` with the reason: pending at infinity it would never be sent, and the
-- scheduler's "how long until the next one" would fail on it for every shop.
--
-- PL/pgSQL, not SQL: an SQL-language function is planned again on every call, PL/pgSQL
-- caches its plans, and for a one-booking INSERT (the common case) planning dominated the
-- triggers. `plan_cache_mode`: a statement with a parameter (the events) is otherwise
-- planned again for its values on every call, because the generic plan's guess of an
-- array's size costs more than one event's plan; that planning was half of a one-booking
-- INSERT's trigger time. `random_page_cost`: the generic plan guesses ten events, and
-- against a small bookings table (a few thousand rows, as in `make bench`) the default
-- cost of ten index lookups exceeded one sequential scan, so every one-booking INSERT read
-- the whole table; the rows these lookups touch are the ones just written, in cache, which
-- 1.1 says. The trigger functions that pass arrays (`on_bookings_inserted`,
-- `on_bookings_updated`) set both for the same reasons.
--
-- One statement shaped for the one-booking INSERT, whose cost is mostly fixed, per
-- statement: setting up each node of the plan and each expression in it. So everything
-- per event is a lookup by key, in nested loops: its booking, customer and shop; the
-- kinds that follow it; its routes (the shop's row, else the default that no shop row
-- overrides); its opt-outs, quiet hours and ICS version. There are no hash tables, sorts
-- or CTEs to build for a set of one, nor a second reading of the booking for quiet hours
-- (the first form, CTEs over the whole set, had about 70 nodes; this one about 30). A
-- 10,000-row INSERT runs the same lookups 10,000 times, and is no slower for it than the
-- set form was (measured: faster); no hash join means no `work_mem` to raise.
--
-- `enqueue` trusts its events and channels (its callers validate them): it must not be
-- callable by hand.
create function pgnotify.enqueue(
    p_events   pgnotify.event[],
    p_channels text[] default null,
    p_manual   boolean default false
) returns setof bigint
language plpgsql volatile
security definer
set plan_cache_mode = force_generic_plan
set random_page_cost = 1.1
set search_path = pg_catalog, pg_temp
as $body$
begin
    return query
    with targets as (
        -- Each event, and the kinds that follow it (`kinds.same_event_as`: the shop's
        -- alerts), addressed to their audience (a shop has no user and no opt-outs: its
        -- rows have no customer_id), on each channel routed or named.
        select e.booking_id, e.payment_id, k.kind, e.occurrence, e.run_at, k.audience,
               b.shop_id, b.starts_at, c.timezone as customer_zone, s.timezone as shop_zone,
               case when k.audience = 'shop' then null else b.customer_id end as customer_id,
               case when k.audience = 'shop' then s.email else c.email end as email,
               case when k.audience = 'shop' then s.phone else c.phone end as phone,
               case when k.audience = 'shop' then null else c.user_id end as user_id,
               ch.channel
        from unnest(p_events) e
        join pgnotify.kinds k
          on k.kind = e.kind or (k.same_event_as = e.kind and not p_manual)
        join booking.bookings b on b.id = e.booking_id
        join booking.customers c on c.id = b.customer_id
        join booking.shops s on s.id = b.shop_id
        cross join lateral (
            select r.channel
            from pgnotify.routes r
            where p_channels is null and r.kind = k.kind and r.enabled
              and (r.shop_id = b.shop_id
                   or r.shop_id is null and not exists (
                       select 1 from pgnotify.routes o
                       where o.shop_id = b.shop_id and o.kind = r.kind
                         and o.channel = r.channel))
            union all
            select named from unnest(p_channels) as named
            where p_channels is not null
        ) ch
    ),
    resolved as (
        select t.*,
               pgnotify.recipient_of(t.channel, t.email, t.phone, t.user_id) as recipient,
               case
                   when o.customer_id is not null
                       then 'customer opted out of ' || t.channel
                           || coalesce(' (' || o.reason || ')', '')
                   when not isfinite(t.run_at)
                       then 'due time ' || pgnotify.time_key(t.run_at) || ' is not a finite time'
                   else pgnotify.recipient_problem(t.channel, t.email, t.phone, t.user_id,
                                                   t.audience)
               end as problem
        from targets t
        -- The answer to HELP goes even to a customer who opted out: carriers require it
        -- (the claim, pgnotify/queries.py, makes the same exception).
        left join pgnotify.opt_outs o
               on o.customer_id = t.customer_id and o.channel = t.channel
              and t.kind <> 'sms_help'
    )
    insert into pgnotify.notifications as n
        (kind, channel, booking_id, payment_id, customer_id, shop_id, recipient,
         status, run_at, occurrence, last_error, held_reason, ics_sequence)
    select r.kind, r.channel, r.booking_id, r.payment_id, r.customer_id, r.shop_id, r.recipient,
           case when r.problem is not null then 'skipped'
                when not p_manual and r.kind in ('reminder_24h', 'reminder_2h')
                     and r.run_at <= now()
                    then 'skipped'
                when h.problem is not null then 'skipped'
                else 'pending' end,
           coalesce(h.run_at, r.run_at), r.occurrence,
           case when r.problem is not null then r.problem
                when not p_manual and r.kind in ('reminder_24h', 'reminder_2h')
                     and r.run_at <= now()
                    then 'reminder due time already past when it was scheduled'
                else h.problem
           end,
           h.held_reason,
           -- The ICS SEQUENCE, frozen (see pgnotify.booking_versions): only the emails
           -- that carry an invitation (pgnotify/ics.py, ICS_METHODS); a booking with no
           -- row has not changed yet, version 0.
           case when r.channel = 'email'
                     and r.kind in ('booking_confirmed', 'booking_rescheduled',
                                    'booking_cancelled')
                then coalesce((select v.version from pgnotify.booking_versions v
                               where v.booking_id = r.booking_id), 0) end
    from resolved r
    -- Quiet hours, for the reminder SMS of the lifecycle only (a null channel: none).
    left join lateral pgnotify.held_reminder(
        case when not p_manual then r.channel end, r.kind, r.run_at, r.starts_at, r.shop_id,
        r.customer_zone, r.shop_zone) h on true
    on conflict do nothing
    returning n.id;
end
$body$;

revoke execute on function pgnotify.enqueue(pgnotify.event[], text[], boolean) from public;

-- The reminders of confirmed bookings, at their exact offsets (shop rules over defaults).
-- SQL, inlined into its callers' cached plans (as `held_reminder`). A booking that
-- never starts (`starts_at` infinite) has no reminders (its confirmation is skipped at
-- send time with the reason, and its pending reminders stop when it moves there), and the
-- due time cannot overflow (`due_before`). Each booking's rules are looked up by key, as
-- `enqueue` looks up routes (the shop's row, else the default no shop row overrides): no
-- sort or hash table to build for the one booking of a single-row INSERT.
create function pgnotify.reminder_events(p_booking_ids uuid[])
returns setof pgnotify.event
language sql stable
as $body$
    select b.id, null::uuid, r.kind, pgnotify.starts_key(b.starts_at),
           case when b.starts_at >= timestamptz '0001-01-01 00:00+00'
                     and r.before_start <= interval '1000 years'
                then b.starts_at - r.before_start
                else pgnotify.due_before(b.starts_at, r.before_start) end
    from booking.bookings b
    join pgnotify.reminder_rules r
      on r.enabled
     and (r.shop_id = b.shop_id
          or r.shop_id is null and not exists (
              select 1 from pgnotify.reminder_rules o
              where o.shop_id = b.shop_id and o.kind = r.kind))
    where b.id = any (p_booking_ids) and b.status = 'confirmed' and isfinite(b.starts_at)
$body$;

create function pgnotify.on_bookings_inserted() returns trigger
language plpgsql
security definer
set plan_cache_mode = force_generic_plan
set random_page_cost = 1.1
set search_path = pg_catalog, pg_temp
as $$
declare
    confirmed uuid[];
begin
    -- A variable, not a sub-select, as the argument: the planner inlines an SQL function
    -- (reminder_events) only when its arguments hold no sub-select.
    confirmed := array(select n.id from new_rows n where n.status = 'confirmed');
    if cardinality(confirmed) = 0 then
        return null;
    end if;
    perform pgnotify.enqueue(array(
        select row(n.id, null, 'booking_confirmed', pgnotify.version_key(n.updated_at), now())
                   ::pgnotify.event
        from new_rows n
        where n.status = 'confirmed'
        union all
        select e from pgnotify.reminder_events(confirmed) e
    ));
    return null;
end
$$;

revoke execute on function pgnotify.on_bookings_inserted() from public;

create function pgnotify.on_bookings_updated() returns trigger
language plpgsql
security definer
set plan_cache_mode = force_generic_plan
set random_page_cost = 1.1
set search_path = pg_catalog, pg_temp
as $$
declare
    changes pgnotify.booking_change[];
    kept    uuid[];               -- confirmed before and after
    fresh   uuid[];               -- newly confirmed, or confirmed and moved
    moved   pgnotify.event[];
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
    -- Quiet hours are evaluated again for the SMS at the new time.
    -- The id lists are variables, not sub-selects, so that reminder_events is inlined
    -- (see on_bookings_inserted).
    kept := array(
        select c.id from unnest(changes) c
        where c.old_status = 'confirmed' and c.new_status = 'confirmed');
    fresh := array(
        select c.id from unnest(changes) c
        where c.new_status = 'confirmed'
          and (c.old_status <> 'confirmed' or c.new_starts_at is distinct from c.old_starts_at));
    moved := array(select e from pgnotify.reminder_events(kept) e);
    update pgnotify.notifications q
       set run_at = case when q.channel = 'sms' and h.run_at is not null then h.run_at
                         else e.run_at end,
           occurrence = e.occurrence,
           status = case when e.run_at <= now() then 'skipped'
                         when q.channel = 'sms' and h.problem is not null then 'skipped'
                         else 'pending' end,
           last_error = case when e.run_at <= now()
                                 then 'reminder due time already past after reschedule'
                             when q.channel = 'sms' then h.problem end,
           held_reason = case when q.channel = 'sms' then h.held_reason end,
           updated_at = now()
      from unnest(moved) e
      join booking.bookings b on b.id = e.booking_id
      join booking.customers c on c.id = b.customer_id
      join booking.shops s on s.id = b.shop_id
      left join lateral pgnotify.held_reminder('sms', e.kind, e.run_at, b.starts_at, b.shop_id,
                                               c.timezone, s.timezone) h on true
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
        select e from pgnotify.reminder_events(fresh) e
    ));
    return null;
end
$$;

revoke execute on function pgnotify.on_bookings_updated() from public;

-- One trigger function per table and operation, every payment rule in one pass: a
-- succeeded or failed payment (its own version, so repeating an identical UPDATE queues
-- nothing new), and a refund, i.e. a payment row inserted as `refunded` (a partial
-- refund, its amount what was given back) or changed to `refunded` (all of it). As
-- separate triggers the rules each paid a transition table and a call per statement.
create function pgnotify.on_payments_changed() returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    events pgnotify.event[];
begin
    if tg_op = 'INSERT' then
        events := array(
            select row(n.booking_id, n.id,
                       case n.status when 'succeeded' then 'payment_confirmed'
                                     when 'failed' then 'payment_failed'
                                     else 'payment_refunded' end,
                       pgnotify.version_key(n.updated_at), now())::pgnotify.event
            from new_rows n
            where n.status in ('succeeded', 'failed', 'refunded'));
    else
        events := array(
            select row(n.booking_id, n.id,
                       case n.status when 'succeeded' then 'payment_confirmed'
                                     when 'failed' then 'payment_failed'
                                     else 'payment_refunded' end,
                       pgnotify.version_key(n.updated_at), now())::pgnotify.event
            from new_rows n join old_rows o on o.id = n.id
            where n.status in ('succeeded', 'failed', 'refunded')
              and n.status is distinct from o.status);
    end if;
    -- Most payment statements (a pending payment) queue nothing: they cost this test,
    -- not a fan-out query.
    if cardinality(events) > 0 then
        perform pgnotify.enqueue(events);
    end if;
    return null;
end
$$;

revoke execute on function pgnotify.on_payments_changed() from public;

-- ICS SEQUENCE. A calendar replaces the event it holds only when an update carries a
-- higher SEQUENCE. The booking's `updated_at` in whole seconds would not do: a
-- cancellation in the same second as its invitation would not supersede it, and the value
-- overflows the 32-bit integers of some calendar clients in 2038. So each change of a
-- booking's status or start time (the changes that send an invitation, a move or a
-- cancellation) bumps a small per-booking counter, and each queued invitation freezes the
-- counter's value in `notifications.ics_sequence`, so a retry sends the same SEQUENCE.
-- `enqueue` (the only writer of queue rows) reads it in its INSERT: a per-row trigger on
-- the queue cost a trigger call for every booking.
--
-- A table of its own, beside the lifecycle triggers rather than inside them: no foreign
-- key to the booking (like the queue, it must never block the application's DELETEs), and
-- no row until a booking's first change (a missing row is version 0).
create table pgnotify.booking_versions (
    booking_id uuid primary key,
    version    int  not null check (version > 0),
    -- The start time before the booking's last move, which a reschedule shows struck
    -- through beside the new one. Kept here because the booking row holds only the new
    -- time; read when the message is sent, like the rest of its context.
    previous_starts_at timestamptz
);

comment on table pgnotify.booking_versions is
    'How many times each booking changed status or start time (its ICS SEQUENCE), and its start before the last move.';

comment on column pgnotify.notifications.ics_sequence is
    'The booking''s version when this invitation was queued, sent as the ICS SEQUENCE.';

-- Runs as its owner, like the other trigger functions.
create function pgnotify.bump_booking_versions() returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    insert into pgnotify.booking_versions as v (booking_id, version, previous_starts_at)
    select n.id, 1, case when o.starts_at is distinct from n.starts_at then o.starts_at end
    from new_rows n join old_rows o on o.id = n.id
    where o.status is distinct from n.status or o.starts_at is distinct from n.starts_at
    on conflict (booking_id) do update
        set version = v.version + 1,
            previous_starts_at = coalesce(excluded.previous_starts_at, v.previous_starts_at);
    return null;
end
$$;

revoke all on function pgnotify.bump_booking_versions() from public;

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

-- AFTER triggers fire in name order: `bookings_ics_…` before `bookings_lifecycle_…`, so the
-- rows the lifecycle trigger queues see the bumped version.
create trigger bookings_ics_version_update
    after update on booking.bookings
    referencing old table as old_rows new table as new_rows
    for each statement execute function pgnotify.bump_booking_versions();



-- Replies (CONTRACT.md §7). What a reply asks for: the whole body, trimmed, in any case.
-- Only the carriers' own keywords, START/UNSTOP, HELP/INFO and C/CONFIRM mean anything;
-- "stop it" or "C u there" do not.
create function pgnotify.reply_action(p_body text) returns text
language sql immutable parallel safe
as $$
    select case upper(btrim(p_body, E' \t\r\n\f\x0B'))
        when 'STOP' then 'opt_out' when 'STOPALL' then 'opt_out'
        when 'UNSUBSCRIBE' then 'opt_out' when 'CANCEL' then 'opt_out'
        when 'END' then 'opt_out' when 'QUIT' then 'opt_out'
        when 'REVOKE' then 'opt_out' when 'OPTOUT' then 'opt_out'
        when 'START' then 'opt_in' when 'UNSTOP' then 'opt_in'
        when 'HELP' then 'help' when 'INFO' then 'help'
        when 'C' then 'confirm' when 'CONFIRM' then 'confirm'
        else 'none'
    end
$$;

comment on function pgnotify.reply_action(text) is
    'What a reply''s body asks for: opt_out, opt_in, help, confirm or none.';

-- Twilio retries a webhook it got no answer to: a message whose MessageSid is known is
-- dropped, so the application's plain INSERT is a no-op (with or without its own
-- `on conflict do nothing`, which also covers two retries racing).
create function pgnotify.skip_known_inbound() returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    if new.provider_id is not null and exists (
        select 1 from pgnotify.inbound_messages m where m.provider_id = new.provider_id) then
        return null;
    end if;
    return new;
end
$$;

revoke execute on function pgnotify.skip_known_inbound() from public;

-- Acts on a reply at once and records what it did. The customers are every customer whose
-- phone is the sender's number (pgnotify.e164 on both sides). AFTER INSERT, so a row that
-- `on conflict do nothing` dropped does nothing. Row-level: replies arrive one per webhook.
--   opt_out  an `sms` opt-out for each of them (source 'keyword');
--   opt_in   their `sms` opt-outs removed, whatever their source (START undoes STOP at the
--            carrier too), and no other channel's;
--   help     `sms_help` queued about the most recently made booking of theirs, so it names
--            that booking's shop and is sent in that customer's language;
--   confirm  `customer_confirmed_at` set on their next upcoming confirmed booking, and the
--            first time, `shop_customer_confirmed` queued to its shop.
create function pgnotify.on_inbound_message() returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_action    text := pgnotify.reply_action(new.body);
    v_customers uuid[];
    v_booking   uuid;
    v_count     bigint;
    v_detail    text;
begin
    v_customers := array(
        select c.id from booking.customers c
        where pgnotify.e164(c.phone) = pgnotify.e164(new.from_address));
    if v_action <> 'none' and cardinality(v_customers) = 0 then
        v_detail := 'no customer has this number';
    elsif v_action = 'opt_out' then
        insert into pgnotify.opt_outs (customer_id, channel, reason, source)
        select c, 'sms', 'replied ' || upper(btrim(new.body)), 'keyword'
        from unnest(v_customers) c
        on conflict do nothing;
        get diagnostics v_count = row_count;
        v_detail := v_count || ' sms opt-out(s) added';
    elsif v_action = 'opt_in' then
        delete from pgnotify.opt_outs o
        where o.customer_id = any (v_customers) and o.channel = 'sms';
        get diagnostics v_count = row_count;
        v_detail := v_count || ' sms opt-out(s) removed';
    elsif v_action = 'help' then
        select b.id into v_booking from booking.bookings b
        where b.customer_id = any (v_customers)
        order by b.created_at desc, b.starts_at desc limit 1;
        if v_booking is null then
            v_detail := 'no booking for this number: no answer queued';
        else
            perform pgnotify.enqueue(array[row(
                v_booking, null, 'sms_help',
                'reply:' || coalesce(new.provider_id, new.id::text), now())::pgnotify.event]);
            v_detail := 'sms_help queued about booking ' || v_booking;
        end if;
    elsif v_action = 'confirm' then
        select b.id into v_booking from booking.bookings b
        where b.customer_id = any (v_customers) and b.status = 'confirmed'
          and b.starts_at > now()
        order by b.starts_at limit 1;
        if v_booking is null then
            v_detail := 'no upcoming confirmed booking to confirm';
        else
            update booking.bookings set customer_confirmed_at = now()
            where id = v_booking and customer_confirmed_at is null;
            -- The shop hears of the first C only (a second one confirms nothing new).
            if found then
                perform pgnotify.enqueue(array[row(
                    v_booking, null, 'shop_customer_confirmed',
                    'reply:' || coalesce(new.provider_id, new.id::text), now())::pgnotify.event]);
            end if;
            v_detail := 'booking ' || v_booking || ' confirmed by the customer';
        end if;
    end if;
    update pgnotify.inbound_messages
       set action = v_action, handled_at = now(), detail = v_detail
     where id = new.id;
    return null;
end
$$;

revoke execute on function pgnotify.on_inbound_message() from public;

create trigger inbound_messages_skip_known
    before insert on pgnotify.inbound_messages
    for each row execute function pgnotify.skip_known_inbound();

create trigger inbound_messages_act
    after insert on pgnotify.inbound_messages
    for each row execute function pgnotify.on_inbound_message();

-- Operator switches, one typed row (the check on `one` keeps it one). `wakeup_notify`:
-- NOTIFY takes a global lock at commit, which serialises an application committing many
-- thousands of transactions a second; with it false the queue's triggers send no wake-up
-- and the daemon polls instead (50 ms while it finds work, doubling to
-- NOTIFICATION_POLL_INTERVAL while idle). The operator flips it with an UPDATE; the daemon
-- reads it on each of its scheduler's polls.
create table pgnotify.settings (
    one           boolean primary key default true check (one),
    wakeup_notify boolean not null default true
);
insert into pgnotify.settings default values;

-- Wake the daemon. One constant payload on one channel: Postgres folds a transaction's
-- identical notifications into one, and the commit-time lock that NOTIFY takes is held
-- once per transaction, not once per row. The daemon re-reads what is due on each wake-up.
-- Unless the operator turned wake-ups off (pgnotify.settings; no row counts as on).
create function pgnotify.wake() returns trigger
language plpgsql
as $$
begin
    if (select s.wakeup_notify from pgnotify.settings s) is not false then
        perform pg_notify('pgnotify', 'wake');
    end if;
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

-- Why a booking cannot be shown in a message, or null. The daemon renders times as
-- calendar dates of the years 1 to 9999 in the shop's zone (and the end as start plus
-- duration); a booking outside them (an infinite or extreme `starts_at`, or a duration
-- that ends past 9999) is skipped with this reason instead of failing in the renderer.
-- Two days of margin cover any zone offset. Comparisons only: the bound moves, never the
-- booking's time, so nothing here can overflow (a duration is at most 2^31 minutes,
-- about 4,083 years).
create function pgnotify.unshowable_reason(p_starts_at timestamptz, p_duration_minutes int)
returns text
language sql stable parallel safe
as $$
    select case
        when not (p_starts_at >= timestamptz '0001-01-03 00:00+00'
                  and p_starts_at < timestamptz '9999-12-29 00:00+00'
                      - make_interval(mins => greatest(coalesce(p_duration_minutes, 0), 0)))
            then 'booking starts at ' || pgnotify.time_key(p_starts_at) || ' and lasts '
                 || coalesce(p_duration_minutes::text, '?') || ' minutes: outside the years'
                 || ' 1 to 9999 that messages can show'
    end
$$;

comment on function pgnotify.unshowable_reason(timestamptz, int) is
    'Why a booking''s time cannot be shown in a message (outside years 1-9999), or null.';

-- What a customer reads out on the phone or types into a search box instead of a uuid.
-- 8 characters of a 32-letter alphabet (A-Z and 2-9 without I and O: no 0/O or 1/I to
-- confuse aloud), one character per 5 bits of the first 40 bits of SHA-256 of the id.
-- Hashed, not cut from the uuid: time-ordered ids (v1, v7) share their leading bits, and
-- would share their references.
--
-- Stable (a pure function of the id, never stored) and short, so not unique: two bookings
-- share one with a probability of about n^2 / 2^41 among n bookings (1 in 20,000 for
-- 10,000). An application that looks a booking up by reference searches within the shop,
-- or confirms the match with the customer's name.
--
-- PL/pgSQL: about a microsecond on top of SHA-256's own. The same in SQL is not inlined (it
-- needs the hash eight times, or a FROM), and the SQL-function executor made it fifty times
-- slower; it runs once per booking in every claimed batch.
create function pgnotify.booking_reference(p_booking_id uuid) returns text
language plpgsql immutable strict parallel safe
as $$
declare
    alphabet constant text := 'ABCDEFGHJKLMNPQRSTUVWXYZ23456789';
    digest   constant bytea := sha256(uuid_send(p_booking_id));
    h        constant bigint := (get_byte(digest, 0)::bigint << 32)
                                | (get_byte(digest, 1)::bigint << 24)
                                | (get_byte(digest, 2)::bigint << 16)
                                | (get_byte(digest, 3)::bigint << 8)
                                | get_byte(digest, 4)::bigint;
begin
    return substr(alphabet, ((h >> 35) & 31)::int + 1, 1)
        || substr(alphabet, ((h >> 30) & 31)::int + 1, 1)
        || substr(alphabet, ((h >> 25) & 31)::int + 1, 1)
        || substr(alphabet, ((h >> 20) & 31)::int + 1, 1)
        || substr(alphabet, ((h >> 15) & 31)::int + 1, 1)
        || substr(alphabet, ((h >> 10) & 31)::int + 1, 1)
        || substr(alphabet, ((h >> 5) & 31)::int + 1, 1)
        || substr(alphabet, (h & 31)::int + 1, 1);
end
$$;

comment on function pgnotify.booking_reference(uuid) is
    'A booking''s short reference: 8 characters of A-Z and 2-9 without I and O, from its id.';

-- The rendering context of a whole claimed batch, one row per distinct (booking,
-- payment), as the templates receive it; the claim joins it once per batch. Beside the
-- context, what the claim needs to resolve recipients at send time (the booking's current
-- customer and contacts, the shop's contacts for the shop's kinds) and `problem`
-- (`unshowable_reason`). Nothing here computes what
-- one row's odd data could make overflow, since that would fail the claim of every row:
-- no `ends_at` (start plus duration; the daemon derives it, pgnotify/context.py), and
-- `sequence` is null for an infinite `updated_at`.
--
-- What the messages show beyond the rows (pgnotify/context.py formats them):
--   booking.reference   `booking_reference(id)`, in every email about a booking;
--   booking.paid        what the booking's `succeeded` payments add up to, and
--   booking.refunded    what its `refunded` payments add up to: each an object of
--                       currency -> cents (payments need not share the booking's
--                       currency, and cents of two currencies do not add up), or null;
--   booking.customer_confirmed_at   when the customer replied C (section 3, replies);
--   payment.created_at, payment.updated_at   the receipt's date (the version at which it
--                       succeeded);
--   booking.previous_starts_at   the start before the last move (booking_versions), which
--                       a reschedule shows struck through;
--   shop.brand_color, shop.logo_url   the shipped layout's branding.
-- The totals are read when the message is sent, like everything here: a cancellation sent
-- after the refund shows it.
--
-- PL/pgSQL with a generic plan: as an SQL function it was not inlined into the claim (its
-- arguments are sub-selects), so its six-table join was planned on every claim, ten times
-- the cost of the bare claim. The cached generic plan fits, since the query is always a
-- handful of primary-key lookups. `json` rather than `jsonb`: the daemon only reads it,
-- and text JSON is cheaper to build.
create function pgnotify.render_contexts(p_booking_ids uuid[], p_payment_ids uuid[])
returns table (booking_id uuid, payment_id uuid, booking_status text,
               starts_at timestamptz, customer_id uuid, email text, phone text,
               user_id uuid, shop_email text, shop_phone text, problem text, context json)
language plpgsql stable
set plan_cache_mode = force_generic_plan
as $body$
#variable_conflict use_column
begin
    return query
    select k.booking_id, k.payment_id, b.status, b.starts_at,
           c.id, c.email, c.phone, c.user_id, s.email, s.phone,
           pgnotify.unshowable_reason(b.starts_at, b.duration_minutes),
           json_build_object(
               'booking', json_build_object(
                   'id', b.id, 'starts_at', b.starts_at,
                   'duration_minutes', b.duration_minutes, 'total_cents', b.total_cents,
                   'currency', b.currency, 'status', b.status,
                   'cancellation_reason', b.cancellation_reason,
                   -- ICS SEQUENCE must grow with each change of the event: the version does.
                   'sequence', case when isfinite(b.updated_at)
                                    then floor(extract(epoch from b.updated_at))::bigint end,
                   'reference', pgnotify.booking_reference(b.id),
                   'customer_confirmed_at', b.customer_confirmed_at,
                   'paid', t.paid, 'refunded', t.refunded,
                   'previous_starts_at', bv.previous_starts_at),
               'shop', json_build_object(
                   'id', s.id, 'name', s.name, 'timezone', s.timezone, 'email', s.email,
                   'phone', s.phone, 'address', s.address, 'locale', s.locale,
                   'brand_color', s.brand_color, 'logo_url', s.logo_url),
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
                   'failure_reason', p.failure_reason, 'created_at', p.created_at,
                   'updated_at', p.updated_at) end)
    from (select distinct u.booking_id, u.payment_id
          from unnest(p_booking_ids, p_payment_ids) as u (booking_id, payment_id)) k
    join booking.bookings b on b.id = k.booking_id
    join booking.shops s on s.id = b.shop_id
    join booking.staff st on st.id = b.staff_id
    join booking.services sv on sv.id = b.service_id
    join booking.customers c on c.id = b.customer_id
    left join booking.payments p on p.id = k.payment_id
    left join pgnotify.booking_versions bv on bv.booking_id = b.id
    -- The totals of every booking of the batch in one aggregate over its payments
    -- (payments_booking_id_idx): a lateral subquery per booking cost ten times as much.
    -- The sums are bigint: many payments of up to 2^31 - 1 cents cannot overflow them.
    left join (
        select g.booking_id,
               json_object_agg(g.currency, g.cents) filter (where g.status = 'succeeded')
                   as paid,
               json_object_agg(g.currency, g.cents) filter (where g.status = 'refunded')
                   as refunded
        from (select bp.booking_id, bp.status, bp.currency, sum(bp.amount_cents) as cents
              from booking.payments bp
              where bp.booking_id = any (p_booking_ids)
                and bp.status in ('succeeded', 'refunded')
              group by bp.booking_id, bp.status, bp.currency) g
        group by g.booking_id
    ) t on t.booking_id = b.id;
end
$body$;

comment on function pgnotify.render_contexts(uuid[], uuid[]) is
    'Rendering context, current customer and contacts of each (booking, payment) given.';

-- Why a claimed row must not be sent, or null: the send-time re-check of the lifecycle
-- rules (`stale_reason`), a booking messages cannot show, and the recipient read now from
-- the booking's current customer, or the shop for the shop's kinds (opted out of the
-- channel, or without a valid contact for it: the rules `enqueue` applies when queuing).
-- The claim skips such a row with this reason.
create function pgnotify.send_problem(
    p_kind text, p_channel text, p_occurrence text, p_booking_status text,
    p_starts_at timestamptz, p_unshowable text, p_email text, p_phone text, p_user_id uuid,
    p_opted_out boolean, p_opt_out_reason text, p_audience text default 'customer'
) returns text
language sql immutable parallel safe
as $$
    select coalesce(
        pgnotify.stale_reason(p_kind, p_occurrence, p_booking_status, p_starts_at),
        p_unshowable,
        case when p_opted_out
             then 'customer opted out of ' || p_channel
                  || coalesce(' (' || p_opt_out_reason || ')', '') end,
        pgnotify.recipient_problem(p_channel, p_email, p_phone, p_user_id, p_audience))
$$;

comment on function pgnotify.send_problem(text, text, text, text, timestamptz, text, text,
                                          text, uuid, boolean, text, text) is
    'Why a claimed notification must not be sent now, or null (see the claim).';


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

-- Reminder SMS that quiet hours moved or skipped, by kind, why and what became of them:
-- `last_error` stays for errors, `held_reason` says why a reminder is not at its offset.
create view pgnotify.held_reminders as
select kind,
       channel,
       held_reason,
       status,
       count(*)    as count,
       min(run_at) filter (where status = 'pending') as next_run_at
from pgnotify.notifications
where held_reason is not null
group by kind, channel, held_reason, status
order by kind, channel, held_reason, status;

comment on view pgnotify.held_reminders is
    'Reminder SMS moved or skipped by quiet hours, counted by kind, reason and status.';

-- What went to and came from each phone number, newest first: the SMS queued for it (the
-- kind, and its status) and the replies it sent (the body, and what pgnotify did). "The
-- customer says they replied STOP" is
--     select * from pgnotify.conversations where phone = pgnotify.e164('+34 600 111 222');
create view pgnotify.conversations as
select x.phone, x.at, x.direction, x.message, x.state, x.note, x.notification_id, x.inbound_id
from (
    select pgnotify.e164(n.recipient) as phone,
           -- When it went, or is to go; when it stopped, for the others.
           case when n.status = 'sent' then n.sent_at
                when n.status in ('pending', 'sending') then n.run_at
                else n.updated_at end as at,
           'out' as direction,
           n.kind as message,
           n.status as state,
           coalesce(n.last_error, n.held_reason) as note,
           n.id as notification_id,
           null::bigint as inbound_id
    from pgnotify.notifications n
    where n.channel = 'sms' and n.recipient is not null
    union all
    select pgnotify.e164(m.from_address), m.received_at, 'in', m.body, m.action, m.detail,
           null, m.id
    from pgnotify.inbound_messages m
    where m.channel = 'sms'
) x
order by x.phone, x.at desc, x.notification_id desc nulls last, x.inbound_id desc nulls last;

comment on view pgnotify.conversations is
    'SMS to and from each phone number, newest first: queued kinds and customers'' replies.';

-- Put a failed or skipped row back in the queue, due now, with a fresh attempt budget.
-- The recipient is resolved again, so fixing a customer's email and retrying works.
-- Runs as its owner: `pgnotify_daemon` (the `pgnotify retry` CLI) gets EXECUTE on it and
-- no table-wide UPDATE.
create function pgnotify.retry(p_id bigint) returns boolean
language sql volatile
security definer
set search_path = pg_catalog, pg_temp
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

revoke execute on function pgnotify.retry(bigint) from public;

comment on function pgnotify.retry(bigint) is
    'Re-queue a failed or skipped notification, due now; true if it did.';

-- Queue a notification by hand. Honours routing when p_channels is null. A manual call is
-- its own occurrence, never suppressed as a duplicate of an automatic notification.
-- Refuses an unknown kind or channel, an empty channel list (`p_channels => '{}'` would
-- queue nothing, silently), and a kind about a payment (`kinds.about_payment`) for a
-- booking without one (the template would have no payment to show). `pgnotify_client`
-- holds EXECUTE on it (section 6).
create function pgnotify.notify_booking(
    p_booking_id uuid,
    p_kind       text,
    p_channels   text[] default null,
    p_run_at     timestamptz default null
) returns bigint[]
language plpgsql volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_about_payment boolean;
    v_payment_id    uuid;
    v_bad           text;
begin
    select about_payment into v_about_payment from pgnotify.kinds where kind = p_kind;
    if not found then
        raise exception 'pgnotify.notify_booking: unknown kind %', p_kind
            using errcode = 'invalid_parameter_value';
    end if;
    if cardinality(p_channels) = 0 then
        raise exception 'pgnotify.notify_booking: no channel given (null means the routing)'
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
    if v_about_payment then
        select id into v_payment_id from booking.payments
        where booking_id = p_booking_id order by updated_at desc, created_at desc limit 1;
        if v_payment_id is null then
            raise exception 'pgnotify.notify_booking: booking % has no payment for %',
                p_booking_id, p_kind
                using errcode = 'no_data_found';
        end if;
    end if;
    return array(
        select pgnotify.enqueue(
            array[row(p_booking_id, v_payment_id, p_kind,
                      'manual:' || gen_random_uuid()::text,
                      coalesce(p_run_at, now()))::pgnotify.event],
            p_channels, true));
end
$$;

revoke execute on function pgnotify.notify_booking(uuid, text, text[], timestamptz) from public;

comment on function pgnotify.notify_booking(uuid, text, text[], timestamptz) is
    'Queue a notification by hand; returns the ids of the rows it queued.';

-- Delete finished rows older than p_older_than, at most p_limit per call so that a large
-- backlog is removed in short transactions. Returns how many rows it deleted. The daemon
-- calls it for retention; it runs as its owner, so the daemon holds no DELETE on the queue.
create function pgnotify.purge(p_older_than interval, p_limit int default 5000) returns bigint
language sql volatile
security definer
set search_path = pg_catalog, pg_temp
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

revoke execute on function pgnotify.purge(interval, int) from public;

comment on function pgnotify.purge(interval, int) is
    'Delete sent, cancelled and skipped notifications older than the interval, in batches;'
    ' never failed ones (dead letters: CONTRACT §5). Returns the count.';

-- In-app messages the customer has read are deleted once older than the retention (by
-- `created_at`); unread ones are kept, whatever their age. The daemon calls this after
-- `pgnotify.purge`. It runs as its owner: the daemon role may not delete inbox rows
-- itself (it could then take back any message), only call this.
create function pgnotify.purge_inbox(p_older_than interval, p_limit int default 5000)
returns bigint
language sql volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
    with doomed as (
        select id from pgnotify.inbox
        where read_at is not null and created_at < now() - p_older_than
        limit p_limit
    ), gone as (
        delete from pgnotify.inbox i using doomed where i.id = doomed.id returning 1
    )
    select count(*) from gone
$$;

comment on function pgnotify.purge_inbox(interval, int) is
    'Delete read inbox messages created before the interval, in batches; never unread ones.'
    ' Returns the count.';

revoke all on function pgnotify.purge_inbox(interval, int) from public;


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
--
-- `pgnotify_daemon` updates only the queue columns that its statements in
-- pgnotify/queries.py change (claim, record outcomes, in-app delivery, lease rescue,
-- release, failing an unclaimable row), never what a row is about (kind, channel,
-- booking, payment, shop, occurrence). The claim writes `customer_id` and `recipient`:
-- they are read from the booking's current customer at send time. It deletes through
-- `pgnotify.purge` (which keeps dead letters) and `pgnotify.purge_inbox` only.
-- `pgnotify retry` (the CLI, run with the daemon's credentials) goes through
-- `pgnotify.retry`. tests/sql/test_daemon_role.py compares this list with the statements
-- of queries.py.

create function pgnotify.grant_daemon_privileges() returns void
language plpgsql
as $$
begin
    grant usage on schema booking, pgnotify to pgnotify_daemon;
    grant select on booking.shops, booking.staff, booking.services, booking.customers,
                    booking.bookings, booking.payments to pgnotify_daemon;
    -- Revoking the table-wide UPDATE also revokes every column-level one: start clean.
    revoke update, delete on pgnotify.notifications from pgnotify_daemon;
    grant select,
          update (status, run_at, attempts, last_error, provider_id, sent_at, claimed_by,
                  lease_until, updated_at, customer_id, recipient)
        on pgnotify.notifications to pgnotify_daemon;
    grant select, insert on pgnotify.inbox to pgnotify_daemon;
    grant select, insert on pgnotify.opt_outs to pgnotify_daemon;
    -- The reply poller (NOTIFICATION_INBOUND_POLL) inserts what Twilio's list shows (its
    -- trigger records `action` and `handled_at` over whatever an insert says).
    grant insert on pgnotify.inbound_messages to pgnotify_daemon;
    grant select on pgnotify.kinds, pgnotify.channels, pgnotify.routes,
                    pgnotify.reminder_rules, pgnotify.schema_migrations,
                    pgnotify.status, pgnotify.dead_letters, pgnotify.quiet_hours,
                    pgnotify.held_reminders, pgnotify.conversations,
                    pgnotify.inbound_messages, pgnotify.settings to pgnotify_daemon;
    -- render_contexts reads the start before a move (what a reschedule shows).
    grant select on pgnotify.booking_versions to pgnotify_daemon;
    grant execute on function pgnotify.purge, pgnotify.purge_inbox, pgnotify.retry
        to pgnotify_daemon;
end
$$;

revoke execute on function pgnotify.grant_daemon_privileges() from public;

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

-- `pgnotify_client` is what an application needs beyond its own tables: read
-- `pgnotify.inbox` and set `read_at` (no other column), call `pgnotify.notify_booking`,
-- insert customers' replies into `pgnotify.inbound_messages`.
-- Nothing else in pgnotify, and no write on the queue: granting it is always safe. The
-- inbox holds every user's messages; the application shows each user their own rows
-- (`where user_id = …`), as it does with its own tables. It cannot log in; grant it to the
-- application's role:
--     grant pgnotify_client to app;
--
-- Same pattern as `pgnotify_daemon`: without CREATEROLE this migration only explains; a
-- DBA can create the role later and call `select pgnotify.grant_client_privileges();`
-- (idempotent).

create function pgnotify.grant_client_privileges() returns void
language plpgsql
as $$
begin
    grant usage on schema pgnotify to pgnotify_client;
    grant select, update (read_at) on pgnotify.inbox to pgnotify_client;
    -- The SMS webhook's insert; the trigger acts with its owner's rights.
    grant insert (channel, from_address, to_address, body, provider_id, received_at)
        on pgnotify.inbound_messages to pgnotify_client;
    grant execute on function pgnotify.notify_booking to pgnotify_client;
end
$$;

revoke execute on function pgnotify.grant_client_privileges from public;

do $$
begin
    if not exists (select 1 from pg_roles where rolname = 'pgnotify_client') then
        begin
            create role pgnotify_client nologin;
        exception
            when insufficient_privilege then
                raise notice 'pgnotify: cannot create role pgnotify_client (needs CREATEROLE); '
                             'create it, then run: select pgnotify.grant_client_privileges();';
                return;
            -- Roles belong to the cluster: another database's migration created it meanwhile.
            when duplicate_object or unique_violation then
                null;
        end;
    end if;
    perform pgnotify.grant_client_privileges();
end
$$;
