-- 005: refunds and booking references (issue 13, CONTRACT.md §6).
--
--   1. The refund kind      `payment_refunded`, its routes, and which kinds are about a payment
--   2. Booking reference    `pgnotify.booking_reference(uuid)`: 8 characters, read aloud safely
--   3. Lifecycle            a payment inserted as, or changed to, `refunded` queues the kind
--   4. Render context       the reference, what was paid and refunded, the payment's dates


-- ===========================================================================================
-- 1. The refund kind
-- ===========================================================================================

insert into pgnotify.kinds (kind, description) values
    ('payment_refunded', 'a payment was refunded');

insert into pgnotify.routes (kind, channel) values
    ('payment_refunded', 'email'),
    ('payment_refunded', 'sms'),
    ('payment_refunded', 'inapp');

-- Which kinds are about one payment rather than the booking as a whole: `notify_booking`
-- attaches the booking's latest payment to those (and refuses a booking without one). It
-- was a list written into that function; as a column, a new payment kind is one UPDATE.
alter table pgnotify.kinds add column about_payment boolean not null default false;

comment on column pgnotify.kinds.about_payment is
    'True for kinds about one payment: notify_booking attaches the booking''s latest payment.';

update pgnotify.kinds set about_payment = true
where kind in ('payment_confirmed', 'payment_failed', 'payment_refunded');


-- ===========================================================================================
-- 2. Booking reference
-- ===========================================================================================
--
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


-- ===========================================================================================
-- 3. Lifecycle
-- ===========================================================================================
--
-- A refund is a payment row inserted as `refunded` (a partial refund, its amount what was
-- given back) or a payment changed to `refunded` (all of it). Its own trigger beside
-- `payments_lifecycle_*` (001) rather than a new body of `on_payments_changed`: the two
-- rules share nothing but the table, and neither migration has to restate the other's.
-- Keyed like the other payment events: one occurrence per payment version, so repeating
-- an identical UPDATE queues nothing new.
create function pgnotify.on_payments_refunded() returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    events pgnotify.event[];
begin
    if tg_op = 'INSERT' then
        events := array(
            select row(n.booking_id, n.id, 'payment_refunded',
                       pgnotify.version_key(n.updated_at), now())::pgnotify.event
            from new_rows n
            where n.status = 'refunded');
    else
        events := array(
            select row(n.booking_id, n.id, 'payment_refunded',
                       pgnotify.version_key(n.updated_at), now())::pgnotify.event
            from new_rows n join old_rows o on o.id = n.id
            where n.status = 'refunded' and o.status is distinct from 'refunded');
    end if;
    -- Most payment statements refund nothing: they cost this test, not a fan-out query.
    if cardinality(events) > 0 then
        perform pgnotify.enqueue(events);
    end if;
    return null;
end
$$;

revoke execute on function pgnotify.on_payments_refunded() from public;

create trigger payments_refund_insert
    after insert on booking.payments
    referencing new table as new_rows
    for each statement execute function pgnotify.on_payments_refunded();

create trigger payments_refund_update
    after update on booking.payments
    referencing old table as old_rows new table as new_rows
    for each statement execute function pgnotify.on_payments_refunded();

-- As in 004, with the payment kinds read from `pgnotify.kinds.about_payment` instead of a
-- list, so `notify_booking(id, 'payment_refunded')` attaches the payment too. A
-- `create or replace` resets SECURITY DEFINER and SET: restated. Its grants are kept.
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

revoke execute on function pgnotify.notify_booking from public;


-- ===========================================================================================
-- 4. Render context
-- ===========================================================================================
--
-- As in 002, with four additions the messages show (pgnotify/context.py formats them):
--   booking.reference   `booking_reference(id)`, in every email about a booking;
--   booking.paid        what the booking's `succeeded` payments add up to, and
--   booking.refunded    what its `refunded` payments add up to: each an object of
--                       currency -> cents (payments need not share the booking's
--                       currency, and cents of two currencies do not add up), or null;
--   payment.created_at, payment.updated_at   the receipt's date (the version at which it
--                       succeeded).
-- The totals are read when the message is sent, like everything here: a cancellation sent
-- after the refund shows it. Same result columns: replaced in place.
create or replace function pgnotify.render_contexts(p_booking_ids uuid[], p_payment_ids uuid[])
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
                                    then floor(extract(epoch from b.updated_at))::bigint end,
                   'reference', pgnotify.booking_reference(b.id),
                   'paid', t.paid, 'refunded', t.refunded),
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
