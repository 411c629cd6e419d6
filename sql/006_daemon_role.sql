-- 006: least privilege. `pgnotify_daemon` holds exactly what `pgnotify run` needs: read the
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
    grant select on pgnotify.routes, pgnotify.reminder_rules, pgnotify.schema_migrations,
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
