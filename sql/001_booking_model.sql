-- 001: the reference booking model (schema `booking`), as CONTRACT.md §1 fixes it.
--
-- The application owns these rows: it INSERTs and UPDATEs them and nothing else.
-- Every notification follows from triggers (003), so this file holds no pgnotify logic
-- beyond keeping `updated_at` honest, which the lifecycle triggers use as the row version.

create schema if not exists booking;

create table booking.shops (
    id         uuid primary key default gen_random_uuid(),
    name       text not null,
    timezone   text not null default 'UTC',
    email      text,
    phone      text,
    address    text,
    locale     text not null default 'en',
    created_at timestamptz not null default now()
);

create table booking.staff (
    id      uuid primary key default gen_random_uuid(),
    shop_id uuid not null references booking.shops (id) on delete cascade,
    name    text not null
);
create index staff_shop_id_idx on booking.staff (shop_id);

create table booking.services (
    id               uuid primary key default gen_random_uuid(),
    shop_id          uuid not null references booking.shops (id) on delete cascade,
    name             text not null,
    duration_minutes int  not null check (duration_minutes > 0),
    price_cents      int  not null check (price_cents >= 0),
    currency         text not null default 'USD' check (currency ~ '^[A-Z]{3}$')
);
create index services_shop_id_idx on booking.services (shop_id);

create table booking.customers (
    id         uuid primary key default gen_random_uuid(),
    name       text not null,
    email      text,
    -- E.164 is expected but not enforced here: a bad number must not break the app's
    -- INSERT; the triggers turn it into a `skipped` notification with the reason.
    phone      text,
    user_id    uuid,
    locale     text,
    timezone   text,
    created_at timestamptz not null default now()
);

create table booking.bookings (
    id                  uuid primary key default gen_random_uuid(),
    shop_id             uuid not null references booking.shops (id),
    staff_id            uuid not null references booking.staff (id),
    service_id          uuid not null references booking.services (id),
    customer_id         uuid not null references booking.customers (id),
    starts_at           timestamptz not null,
    duration_minutes    int  not null check (duration_minutes > 0),
    total_cents         int  not null check (total_cents >= 0),
    currency            text not null default 'USD' check (currency ~ '^[A-Z]{3}$'),
    status              text not null default 'pending'
        check (status in ('pending', 'confirmed', 'cancelled', 'completed', 'no_show')),
    cancellation_reason text,
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now()
);
create index bookings_customer_id_idx on booking.bookings (customer_id);
create index bookings_shop_id_starts_at_idx on booking.bookings (shop_id, starts_at);

create table booking.payments (
    id             uuid primary key default gen_random_uuid(),
    booking_id     uuid not null references booking.bookings (id) on delete cascade,
    amount_cents   int  not null check (amount_cents >= 0),
    currency       text not null default 'USD' check (currency ~ '^[A-Z]{3}$'),
    status         text not null default 'pending'
        check (status in ('pending', 'succeeded', 'failed', 'refunded')),
    provider       text,
    provider_ref   text,
    failure_reason text,
    created_at     timestamptz not null default now(),
    updated_at     timestamptz not null default now()
);
create index payments_booking_id_idx on booking.payments (booking_id);

-- `updated_at` is the row version the lifecycle triggers key their occurrences on, so it
-- must move on every real change even when the application forgets to set it.
create function booking.touch_updated_at() returns trigger
language plpgsql as $$
begin
    if new.updated_at is not distinct from old.updated_at then
        new.updated_at := now();
    end if;
    return new;
end
$$;

create trigger bookings_touch_updated_at
    before update on booking.bookings
    for each row when (old.* is distinct from new.*)
    execute function booking.touch_updated_at();

create trigger payments_touch_updated_at
    before update on booking.payments
    for each row when (old.* is distinct from new.*)
    execute function booking.touch_updated_at();
