-- 002: one row's data never stops another, and contacts are read when a message is sent
-- (issue 12, CONTRACT.md §5).
--
--   1. Keys of infinite times   `version_key`, `starts_key` never return null
--   2. Reminder due times       never an error, never infinite
--   3. Queueing                 a due time that is not finite is skipped, not queued
--   4. Send time                what the claim reads: no arithmetic that can overflow, the
--                               booking's current customer, why a row cannot be sent
--
-- The claim itself (pgnotify/queries.py, CLAIM_DUE) resolves each row's recipient from the
-- booking's current customer as it claims it, records it in `recipient`, and skips the row
-- when the customer opted out of the channel or no longer has a valid contact for it. If a
-- data error (SQLSTATE class 22) still escapes the claim, the worker claims the batch one
-- row at a time and fails the row that raised it (`FAIL_UNCLAIMABLE`).


-- ===========================================================================================
-- 1. Keys of infinite times
-- ===========================================================================================
--
-- `to_char` of an infinite timestamp is null, so a booking inserted with
-- `updated_at = 'infinity'` (or confirmed with `starts_at = 'infinity'`) made the
-- occurrence null and the application's own INSERT failed inside our trigger. Finite times
-- keep their key unchanged (queued rows compare against it).

create or replace function pgnotify.time_key(ts timestamptz) returns text
language sql immutable parallel safe
as $$
    select case when ts = 'infinity' then 'infinity'
                when ts = '-infinity' then '-infinity'
                else to_char(ts at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') end
$$;

comment on function pgnotify.time_key(timestamptz) is
    'A timestamp as occurrence keys and reasons show it: UTC, microseconds, or (-)infinity.';

create or replace function pgnotify.version_key(ts timestamptz) returns text
language sql immutable parallel safe
as $$ select 'version:' || pgnotify.time_key(ts) $$;

create or replace function pgnotify.starts_key(ts timestamptz) returns text
language sql immutable parallel safe
as $$ select 'starts:' || pgnotify.time_key(ts) $$;


-- ===========================================================================================
-- 2. Reminder due times
-- ===========================================================================================
--
-- `starts_at - before_start` overflows for a start near the lowest timestamp (4714 BC) or
-- an operator's rule of many millennia, and the error failed the application's INSERT. The
-- usual case is computed inline (no subtransaction per row); only the rare one goes
-- through this guard, whose answer, the lowest timestamp, makes the reminder already past,
-- so it is queued `skipped` with that reason.
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

-- As in 001, with two changes: a booking that never starts (`starts_at` infinite) has no
-- reminders (its confirmation is skipped at send time with the reason, and its pending
-- reminders stop when it moves there), and the due time cannot overflow.
create or replace function pgnotify.reminder_events(p_booking_ids uuid[])
returns setof pgnotify.event
language plpgsql stable
as $body$
begin
    return query
    with b as (
        select id, shop_id, starts_at
        from booking.bookings
        where id = any (p_booking_ids) and status = 'confirmed' and isfinite(starts_at)
    ),
    rules as (
        select distinct on (s.shop_id, r.kind) s.shop_id, r.kind, r.before_start, r.enabled
        from (select distinct shop_id from b) s
        join pgnotify.reminder_rules r on r.shop_id is null or r.shop_id = s.shop_id
        order by s.shop_id, r.kind, r.shop_id nulls last
    )
    select b.id, null::uuid, rules.kind, pgnotify.starts_key(b.starts_at),
           case when b.starts_at >= timestamptz '0001-01-01 00:00+00'
                     and rules.before_start <= interval '1000 years'
                then b.starts_at - rules.before_start
                else pgnotify.due_before(b.starts_at, rules.before_start) end
    from b join rules on rules.shop_id = b.shop_id
    where rules.enabled;
end
$body$;


-- ===========================================================================================
-- 3. Queueing
-- ===========================================================================================
--
-- As in 001, with one change: a row whose due time is not finite (`notify_booking(…,
-- p_run_at => 'infinity')`) is queued `skipped` with the reason. Pending at infinity it
-- would never be sent, and the scheduler's "how long until the next one" would fail on it
-- for every shop.
create or replace function pgnotify.enqueue(
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
                   when not isfinite(t.run_at)
                       then 'due time ' || pgnotify.time_key(t.run_at) || ' is not a finite time'
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


-- ===========================================================================================
-- 4. Send time
-- ===========================================================================================

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

-- The rendering context of a whole claimed batch, as in 001, plus what the claim needs to
-- resolve recipients at send time (the booking's current customer and contacts) and
-- `problem` (`unshowable_reason`). Two values the claim used to compute are gone or
-- guarded, because one row's overflow failed the claim of every row: `ends_at` (start plus
-- duration; the daemon derives it, pgnotify/context.py) and `sequence` (null for an
-- infinite `updated_at`). Dropped and created: its result columns change.
drop function pgnotify.render_contexts(uuid[], uuid[]);

create function pgnotify.render_contexts(p_booking_ids uuid[], p_payment_ids uuid[])
returns table (booking_id uuid, payment_id uuid, booking_status text,
               starts_at timestamptz, customer_id uuid, email text, phone text,
               user_id uuid, problem text, context json)
language plpgsql stable
set plan_cache_mode = force_generic_plan
as $body$
#variable_conflict use_column
begin
    return query
    select k.booking_id, k.payment_id, b.status, b.starts_at,
           c.id, c.email, c.phone, c.user_id,
           pgnotify.unshowable_reason(b.starts_at, b.duration_minutes),
           json_build_object(
               'booking', json_build_object(
                   'id', b.id, 'starts_at', b.starts_at,
                   'duration_minutes', b.duration_minutes, 'total_cents', b.total_cents,
                   'currency', b.currency, 'status', b.status,
                   'cancellation_reason', b.cancellation_reason,
                   -- ICS SEQUENCE must grow with each change of the event: the version does.
                   'sequence', case when isfinite(b.updated_at)
                                    then floor(extract(epoch from b.updated_at))::bigint end),
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

comment on function pgnotify.render_contexts(uuid[], uuid[]) is
    'Rendering context, current customer and contacts of each (booking, payment) given.';

-- Why a claimed row must not be sent, or null: the send-time re-check of the lifecycle
-- rules (`stale_reason`), a booking messages cannot show, and the recipient read now from
-- the booking's current customer (opted out of the channel, or without a valid contact
-- for it: the rules `enqueue` applies when queuing). The claim skips such a row with this
-- reason.
create function pgnotify.send_problem(
    p_kind text, p_channel text, p_occurrence text, p_booking_status text,
    p_starts_at timestamptz, p_unshowable text, p_email text, p_phone text, p_user_id uuid,
    p_opted_out boolean, p_opt_out_reason text
) returns text
language sql immutable parallel safe
as $$
    select coalesce(
        pgnotify.stale_reason(p_kind, p_occurrence, p_booking_status, p_starts_at),
        p_unshowable,
        case when p_opted_out
             then 'customer opted out of ' || p_channel
                  || coalesce(' (' || p_opt_out_reason || ')', '') end,
        pgnotify.recipient_problem(p_channel, p_email, p_phone, p_user_id))
$$;

comment on function pgnotify.send_problem(text, text, text, text, timestamptz, text, text,
                                          text, uuid, boolean, text) is
    'Why a claimed notification must not be sent now, or null (see the claim).';
