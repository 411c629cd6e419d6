-- Using your own booking tables: mirror them into pgnotify's `booking` model.
--
-- pgnotify's lifecycle triggers watch booking.bookings (and booking.payments). If your
-- application already has its own tables, keep them: a trigger on each of yours upserts
-- the row into the reference model, in the same transaction, and everything else follows.
-- Here `app.appointments` stores status in its own words and the price in a numeric.

create schema if not exists app;

create table if not exists app.appointments (
    id          uuid primary key default gen_random_uuid(),
    shop_id     uuid not null,      -- your ids can be reused as the booking model's ids
    barber_id   uuid not null,
    service_id  uuid not null,
    client_id   uuid not null,
    start_time  timestamptz not null,
    minutes     int not null,
    price       numeric(10, 2) not null,
    state       text not null default 'requested'   -- requested | booked | cancelled | done
);

create or replace function app.mirror_appointment() returns trigger
language plpgsql as $$
begin
    insert into booking.bookings as b (id, shop_id, staff_id, service_id, customer_id,
                                       starts_at, duration_minutes, total_cents, status)
    values (new.id, new.shop_id, new.barber_id, new.service_id, new.client_id,
            new.start_time, new.minutes, (new.price * 100)::int,
            case new.state when 'booked' then 'confirmed'
                           when 'cancelled' then 'cancelled'
                           when 'done' then 'completed'
                           else 'pending' end)
    on conflict (id) do update
        set starts_at = excluded.starts_at, duration_minutes = excluded.duration_minutes,
            total_cents = excluded.total_cents, status = excluded.status;
    return null;
end
$$;

drop trigger if exists appointments_to_pgnotify on app.appointments;
create trigger appointments_to_pgnotify
    after insert or update on app.appointments
    for each row execute function app.mirror_appointment();
