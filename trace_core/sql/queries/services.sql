-- name: acquire
INSERT INTO state.service_leases AS s (service, holder, lease_expires_at)
VALUES (%(service)s, %(holder)s, now() + make_interval(secs => %(lease_seconds)s))
ON CONFLICT (service) DO UPDATE
SET holder = EXCLUDED.holder, lease_expires_at = EXCLUDED.lease_expires_at,
    acquired_at = CASE WHEN s.holder = EXCLUDED.holder THEN s.acquired_at ELSE now() END
WHERE s.lease_expires_at <= now() OR s.holder = EXCLUDED.holder
RETURNING holder

-- name: renew
UPDATE state.service_leases
SET lease_expires_at = now() + make_interval(secs => %(lease_seconds)s)
WHERE service = %(service)s AND holder = %(holder)s
RETURNING lease_expires_at

-- name: release
DELETE FROM state.service_leases WHERE service = %(service)s AND holder = %(holder)s

-- name: holder
SELECT holder FROM state.service_leases WHERE service = %(service)s AND lease_expires_at > now()
