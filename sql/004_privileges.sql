-- 004: privileges. The functions that write the queue run as their owner; the application
-- needs rights on its own `booking` tables only; `pgnotify_client` holds the rest of what an
-- application may do (read its inbox, mark it read, queue a notification by hand); the
-- daemon updates only the columns its statements change (CONTRACT.md §5).
--
--   1. Queue writers   SECURITY DEFINER, search_path pinned, EXECUTE closed
--   2. notify_booking  refuses a payment kind without a payment, and an empty channel list
--   3. The daemon      column-level UPDATE, EXECUTE on the functions it calls
--   4. The client      `pgnotify_client`, what an application needs beyond its tables


-- ===========================================================================================
-- 1. Queue writers
-- ===========================================================================================
--
-- Without this the lifecycle triggers run with the rights of whoever changes a booking, so
-- an application role needs rights on pgnotify's tables, and with them could mark rows
-- sent or redirect them. As SECURITY DEFINER they run as the migrating role; `search_path`
-- is pinned so that nothing the caller creates (a function or operator in a schema of its
-- own, a temporary table) can stand in for a name in their bodies. Every name in those
-- bodies is schema-qualified (`pgnotify.`, `booking.`; built-ins are in pg_catalog).
--
-- Names without argument lists: each is unique in its schema, so these statements still
-- hold if an earlier migration changed a signature (and fail loudly on an overload).

alter function pgnotify.enqueue security definer set search_path = pg_catalog, pg_temp;
alter function pgnotify.on_bookings_inserted security definer
    set search_path = pg_catalog, pg_temp;
alter function pgnotify.on_bookings_updated security definer
    set search_path = pg_catalog, pg_temp;
alter function pgnotify.on_payments_changed security definer
    set search_path = pg_catalog, pg_temp;
alter function pgnotify.retry security definer set search_path = pg_catalog, pg_temp;
alter function pgnotify.purge security definer set search_path = pg_catalog, pg_temp;

-- Nobody calls these but the triggers, the other functions and the owner. Postgres checks
-- EXECUTE on a trigger function when the trigger is created, never when it fires, so the
-- application's INSERT still runs them. `enqueue` trusts its events and channels (its
-- callers validate them): it must not be callable by hand.
revoke execute on function pgnotify.enqueue, pgnotify.on_bookings_inserted,
    pgnotify.on_bookings_updated, pgnotify.on_payments_changed, pgnotify.retry,
    pgnotify.purge from public;

-- There is no `alter default privileges in schema pgnotify revoke execute on functions
-- from public`: per-schema default privileges only add to the global ones, so that
-- statement changes nothing (PostgreSQL's ALTER DEFAULT PRIVILEGES documents it), and the
-- global form would close every function the migrating role creates in the application's
-- schemas too. tests/sql/test_privileges.py finds every function that writes pgnotify's
-- tables instead and fails on one that is not SECURITY DEFINER, pinned and closed.


-- ===========================================================================================
-- 2. notify_booking
-- ===========================================================================================
--
-- Replaced (a `create or replace` resets SECURITY DEFINER and SET, restated here) for two
-- refusals: a payment kind for a booking without a payment used to queue rows with no
-- payment (the template then had none to show), and `p_channels => '{}'` passed the channel
-- check and queued nothing, silently.

create or replace function pgnotify.notify_booking(
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
    v_payment_id uuid;
    v_bad        text;
begin
    if p_kind is null or not exists (select 1 from pgnotify.kinds where kind = p_kind) then
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
    if p_kind in ('payment_confirmed', 'payment_failed') then
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

revoke execute on function pgnotify.notify_booking from public;


-- ===========================================================================================
-- 3. The daemon
-- ===========================================================================================
--
-- Replaced: `pgnotify_daemon` now updates only the queue columns that its statements in
-- pgnotify/queries.py change (claim, record outcomes, in-app delivery, lease rescue,
-- release, failing an unclaimable row), never what a row is about (kind, channel,
-- booking, payment, shop, occurrence). The claim writes `customer_id` and `recipient`:
-- they are read from the booking's current customer at send time (002). It deletes
-- through `pgnotify.purge` (which keeps dead letters) and `pgnotify.purge_inbox` only.
-- `pgnotify retry` (the CLI, run with the daemon's credentials) goes through
-- `pgnotify.retry`. Idempotent, also over the table-wide grants of 001.
-- tests/sql/test_daemon_role.py compares this list with the statements of queries.py.

create or replace function pgnotify.grant_daemon_privileges() returns void
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
    grant select on pgnotify.kinds, pgnotify.channels, pgnotify.routes,
                    pgnotify.reminder_rules, pgnotify.schema_migrations,
                    pgnotify.status, pgnotify.dead_letters to pgnotify_daemon;
    grant execute on function pgnotify.purge, pgnotify.purge_inbox, pgnotify.retry
        to pgnotify_daemon;
end
$$;

revoke execute on function pgnotify.grant_daemon_privileges from public;

do $$
begin
    if exists (select 1 from pg_roles where rolname = 'pgnotify_daemon') then
        perform pgnotify.grant_daemon_privileges();
    end if;
end
$$;


-- ===========================================================================================
-- 4. The client
-- ===========================================================================================
--
-- `pgnotify_client` is what an application needs beyond its own tables: read
-- `pgnotify.inbox` and set `read_at` (no other column), call `pgnotify.notify_booking`.
-- Nothing else in pgnotify, and no write on the queue: granting it is always safe. The
-- inbox holds every user's messages; the application shows each user their own rows
-- (`where user_id = …`), as it does with its own tables. It cannot log in; grant it to the
-- application's role:
--     grant pgnotify_client to app;
--
-- Same pattern as `pgnotify_daemon` (001, section 6): without CREATEROLE this migration
-- only explains; a DBA can create the role later and call
-- `select pgnotify.grant_client_privileges();` (idempotent).

create function pgnotify.grant_client_privileges() returns void
language plpgsql
as $$
begin
    grant usage on schema pgnotify to pgnotify_client;
    grant select, update (read_at) on pgnotify.inbox to pgnotify_client;
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
