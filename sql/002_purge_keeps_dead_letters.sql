-- Retention never deletes dead letters (CONTRACT §5): a `failed` row waits for an operator
-- to retry it or delete it, however old it is. Only the body's status list changes.
create or replace function pgnotify.purge(p_older_than interval, p_limit int default 5000)
returns bigint
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
    ' never failed ones (dead letters). Returns the count.';
