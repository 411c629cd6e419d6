-- 005: what the daemon asks of the database at send time.

-- Why a claimed notification must no longer be sent, or null. The send-time re-check of
-- the lifecycle rules: a reminder whose booking was cancelled or moved after a race left
-- it pending is skipped, never sent. A vanished booking is skipped too.
create function pgnotify.stale_reason(
    p_kind text, p_occurrence text, p_booking_status text, p_starts_at timestamptz
) returns text
language sql immutable parallel safe
as $$
    select case
        when p_booking_status is null then 'booking no longer exists'
        when p_kind in ('reminder_24h', 'reminder_2h') and p_booking_status <> 'confirmed'
            then 'booking is ' || p_booking_status || ' now; reminder not sent'
        when p_kind in ('reminder_24h', 'reminder_2h')
             and p_occurrence not like 'manual:%'
             and p_occurrence <> pgnotify.starts_key(p_starts_at)
            then 'booking was rescheduled; reminder not sent'
    end
$$;

-- The rendering context of one booking (and payment), as the templates receive it.
-- One call per claimed row, inside the claim statement: no extra round trip.
create function pgnotify.render_context(p_booking_id uuid, p_payment_id uuid) returns jsonb
language sql stable
as $$
    select jsonb_build_object(
        'booking', jsonb_build_object(
            'id', b.id, 'starts_at', b.starts_at,
            'ends_at', b.starts_at + make_interval(mins => b.duration_minutes),
            'duration_minutes', b.duration_minutes, 'total_cents', b.total_cents,
            'currency', b.currency, 'status', b.status,
            'cancellation_reason', b.cancellation_reason,
            -- ICS SEQUENCE must grow with each change of the event: the row version does.
            'sequence', floor(extract(epoch from b.updated_at))::bigint),
        'shop', jsonb_build_object(
            'id', s.id, 'name', s.name, 'timezone', s.timezone, 'email', s.email,
            'phone', s.phone, 'address', s.address, 'locale', s.locale),
        'staff', jsonb_build_object('id', st.id, 'name', st.name),
        'service', jsonb_build_object(
            'id', sv.id, 'name', sv.name, 'duration_minutes', sv.duration_minutes,
            'price_cents', sv.price_cents, 'currency', sv.currency),
        'customer', jsonb_build_object(
            'id', c.id, 'name', c.name, 'email', c.email, 'phone', c.phone,
            'user_id', c.user_id, 'locale', c.locale, 'timezone', c.timezone),
        'payment', (select jsonb_build_object(
            'id', p.id, 'amount_cents', p.amount_cents, 'currency', p.currency,
            'status', p.status, 'provider', p.provider, 'provider_ref', p.provider_ref,
            'failure_reason', p.failure_reason)
            from booking.payments p where p.id = p_payment_id))
    from booking.bookings b
    join booking.shops s on s.id = b.shop_id
    join booking.staff st on st.id = b.staff_id
    join booking.services sv on sv.id = b.service_id
    join booking.customers c on c.id = b.customer_id
    where b.id = p_booking_id
$$;
