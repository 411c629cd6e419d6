-- 003: the lifecycle. Triggers on booking.bookings and booking.payments decide which
-- notifications a change causes and when; a trigger on the queue wakes the daemon.
--
-- All triggers are statement-level with transition tables, so a 10,000-row INSERT runs
-- each rule once as a set operation instead of 10,000 times. Every rule of CONTRACT.md §2
-- lives in this file; the daemon never re-derives one.

-- An event some row change causes; `enqueue` fans it out to channels.
create type pgnotify.event as (
    booking_id uuid,
    payment_id uuid,
    kind       text,
    occurrence text,
    run_at     timestamptz
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
create function pgnotify.enqueue(
    p_events   pgnotify.event[],
    p_channels text[] default null,
    p_manual   boolean default false
) returns setof bigint
language sql volatile
as $$
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
    returning n.id
$$;

-- The reminders of confirmed bookings, at their exact offsets (shop rules over defaults).
create function pgnotify.reminder_events(p_booking_ids uuid[]) returns setof pgnotify.event
language sql stable
as $$
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
    where rules.enabled
$$;

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

-- What changed in one booking row, as the update trigger sees it.
create type pgnotify.booking_change as (
    id            uuid,
    old_status    text,
    new_status    text,
    old_starts_at timestamptz,
    new_starts_at timestamptz,
    version       timestamptz
);

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
create function pgnotify.wake_on_insert() returns trigger
language plpgsql
as $$
begin
    if exists (select 1 from new_rows where status = 'pending') then
        perform pg_notify('pgnotify', 'wake');
    end if;
    return null;
end
$$;

create function pgnotify.wake_on_update() returns trigger
language plpgsql
as $$
begin
    if exists (select 1 from new_rows n join old_rows o on o.id = n.id
               where n.status = 'pending'
                 and (o.status <> 'pending' or o.run_at is distinct from n.run_at)) then
        perform pg_notify('pgnotify', 'wake');
    end if;
    return null;
end
$$;

create trigger notifications_wake_insert
    after insert on pgnotify.notifications
    referencing new table as new_rows
    for each statement execute function pgnotify.wake_on_insert();

create trigger notifications_wake_update
    after update on pgnotify.notifications
    referencing old table as old_rows new table as new_rows
    for each statement execute function pgnotify.wake_on_update();
