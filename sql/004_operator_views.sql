-- 004: what operators use from psql (CONTRACT.md §3), and the retention purge.

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
    if p_kind not in ('booking_confirmed', 'payment_confirmed', 'payment_failed',
                      'booking_cancelled', 'booking_rescheduled', 'reminder_24h',
                      'reminder_2h') then
        raise exception 'pgnotify.notify_booking: unknown kind %', p_kind
            using errcode = 'invalid_parameter_value';
    end if;
    select c into v_bad from unnest(p_channels) c where c not in ('email', 'sms', 'inapp') limit 1;
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
-- backlog is removed in short transactions. Returns how many rows it deleted.
create function pgnotify.purge(p_older_than interval, p_limit int default 5000) returns bigint
language sql volatile
as $$
    with doomed as (
        select id from pgnotify.notifications
        where status in ('sent', 'failed', 'cancelled', 'skipped')
          and updated_at < now() - p_older_than
        limit p_limit
    ), gone as (
        delete from pgnotify.notifications q using doomed where q.id = doomed.id returning 1
    )
    select count(*) from gone
$$;

comment on function pgnotify.purge(interval, int) is
    'Delete finished notifications older than the interval, in batches; returns the count.';
