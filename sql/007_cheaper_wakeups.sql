-- 007: cheaper wake-ups, measured with `make bench` (trigger overhead).
--
-- The statement-level wake triggers of 003 captured every inserted or updated queue row
-- in a transition table just to ask "is one of them pending?". On INSERT that capture
-- cost more than the question is worth: wake on every insert statement instead (a
-- spurious wake-up costs the daemon one cheap query). On UPDATE the capture sat on the
-- daemon's hot path (every claim and every outcome): a row-level trigger whose WHEN
-- clause the executor evaluates inline fires only for rows going (back) to pending, and
-- Postgres folds their identical notifications into one per transaction.

drop trigger notifications_wake_insert on pgnotify.notifications;
drop trigger notifications_wake_update on pgnotify.notifications;

create function pgnotify.wake() returns trigger
language plpgsql
as $$
begin
    perform pg_notify('pgnotify', 'wake');
    return null;
end
$$;

create trigger notifications_wake_insert
    after insert on pgnotify.notifications
    for each statement execute function pgnotify.wake();

create trigger notifications_wake_update
    after update on pgnotify.notifications
    for each row
    when (new.status = 'pending'
          and (old.status <> 'pending' or old.run_at is distinct from new.run_at))
    execute function pgnotify.wake();

drop function pgnotify.wake_on_insert();
drop function pgnotify.wake_on_update();

-- A big INSERT fans out to many queue rows: the fan-out's hash joins get room so they do
-- not spill to disk (the planner cannot know how many events an array holds).
-- SQL-language functions are planned again on every call; PL/pgSQL caches the plans.
-- For a one-booking INSERT (the common case) planning these two dominated the triggers.
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

create or replace function pgnotify.reminder_events(p_booking_ids uuid[])
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
