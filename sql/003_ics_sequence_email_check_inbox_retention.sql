-- 003: small trust-boundary items of issue 12.
--
--   1. One email rule   `pgnotify.is_valid_email`, the rule the sender applies too
--   2. ICS SEQUENCE     a per-booking counter, frozen into the queue row when queued
--   3. Inbox retention  read in-app messages older than the retention are purged


-- ===========================================================================================
-- 1. One email rule
-- ===========================================================================================
--
-- The triggers used a looser pattern than the sender (`pgnotify/channels/mime.py`,
-- `is_valid_address`): `ana..b@example.com` or `zoë@example.com` were queued, then failed
-- at send time instead of being skipped with the reason. Both now apply this one rule, and
-- tests/unit/test_email_rule.py feeds one corpus to both: an ASCII dot-atom local part of
-- at most 64 characters, `@`, letter-digit-hyphen labels of at most 63 characters (no
-- leading or trailing hyphen; international domains in their xn-- form), at most 254
-- characters in all. A domain without a dot (`noreply@localhost`) is valid, as for SMTP.
-- Null is not valid. The value is checked as given; callers trim.
create function pgnotify.is_valid_email(p_address text) returns boolean
language sql immutable parallel safe
as $$
    select coalesce(
        length(p_address) <= 254
        and p_address ~ '^[A-Za-z0-9!#$%&''*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&''*+/=?^_`{|}~-]+)*@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$'
        and position('@' in p_address) <= 65,
        false)
$$;

comment on function pgnotify.is_valid_email(text) is
    'True for an address pgnotify sends to (the rule of mime.is_valid_address).';

-- As in 001, with the email pattern replaced by `pgnotify.is_valid_email`.
create or replace function pgnotify.recipient_problem(channel text, email text, phone text, user_id uuid)
returns text
language sql immutable parallel safe
as $$
select case
    when channel = 'email' and nullif(btrim(email), '') is null
        then 'customer has no email address'
    when channel = 'email' and not pgnotify.is_valid_email(btrim(email))
        then 'customer email is not a valid address'
    when channel = 'sms' and nullif(btrim(phone), '') is null
        then 'customer has no phone number'
    when channel = 'sms' and btrim(phone) !~ '^\+[1-9][0-9]{1,14}$'
        then 'customer phone is not in E.164 format (+ and up to 15 digits)'
    when channel = 'inapp' and user_id is null
        then 'customer has no user_id for in-app messages'
end
$$;


-- ===========================================================================================
-- 2. ICS SEQUENCE
-- ===========================================================================================
--
-- A calendar replaces the event it holds only when an update carries a higher SEQUENCE.
-- It used to be the booking's `updated_at` in whole seconds, so a cancellation in the same
-- second as its invitation did not supersede it, and the value overflows the 32-bit
-- integers of some calendar clients in 2038. Now each change of a booking's status or
-- start time (the changes that send an invitation, a move or a cancellation) bumps a small
-- per-booking counter, and each queued invitation freezes the counter's value in
-- `notifications.ics_sequence`, so a retry sends the same SEQUENCE.
--
-- A table of its own, beside the lifecycle triggers rather than inside them: no foreign
-- key to the booking (like the queue, it must never block the application's DELETEs), and
-- no row until a booking's first change (a missing row is version 0).
create table pgnotify.booking_versions (
    booking_id uuid primary key,
    version    int  not null check (version > 0)
);

comment on table pgnotify.booking_versions is
    'How many times each booking changed status or start time: its ICS SEQUENCE.';

alter table pgnotify.notifications add column ics_sequence int;

comment on column pgnotify.notifications.ics_sequence is
    'The booking''s version when this invitation was queued, sent as the ICS SEQUENCE.';

-- Runs as its owner: the application updating its bookings holds no rights in pgnotify.
create function pgnotify.bump_booking_versions() returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    insert into pgnotify.booking_versions as v (booking_id, version)
    select n.id, 1
    from new_rows n join old_rows o on o.id = n.id
    where o.status is distinct from n.status or o.starts_at is distinct from n.starts_at
    on conflict (booking_id) do update set version = v.version + 1;
    return null;
end
$$;

revoke all on function pgnotify.bump_booking_versions() from public;

-- AFTER triggers fire in name order: `bookings_ics_…` before `bookings_lifecycle_…`, so the
-- rows the lifecycle trigger queues see the bumped version.
create trigger bookings_ics_version_update
    after update on booking.bookings
    referencing old table as old_rows new table as new_rows
    for each statement execute function pgnotify.bump_booking_versions();

create function pgnotify.freeze_ics_sequence() returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    new.ics_sequence := coalesce(
        (select v.version from pgnotify.booking_versions v where v.booking_id = new.booking_id),
        0);
    return new;
end
$$;

revoke all on function pgnotify.freeze_ics_sequence() from public;

-- Only the emails that carry an invitation (pgnotify/ics.py, ICS_METHODS): the WHEN clause
-- is evaluated inline, so every other queued row costs nothing.
create trigger notifications_freeze_ics_sequence
    before insert on pgnotify.notifications
    for each row
    when (new.channel = 'email' and new.ics_sequence is null and new.booking_id is not null
          and new.kind in ('booking_confirmed', 'booking_rescheduled', 'booking_cancelled'))
    execute function pgnotify.freeze_ics_sequence();


-- ===========================================================================================
-- 3. Inbox retention
-- ===========================================================================================
--
-- In-app messages the customer has read are deleted once older than the retention (by
-- `created_at`); unread ones are kept, whatever their age. The daemon calls this after
-- `pgnotify.purge`. It runs as its owner: the daemon role may not delete inbox rows
-- itself (it could then take back any message), only call this.
create index inbox_read_created_at_idx on pgnotify.inbox (created_at) where read_at is not null;

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

do $$
begin
    if exists (select 1 from pg_roles where rolname = 'pgnotify_daemon') then
        grant execute on function pgnotify.purge_inbox(interval, int) to pgnotify_daemon;
    end if;
end
$$;
