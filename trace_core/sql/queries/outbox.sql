-- name: insert_outbox
INSERT INTO state.outbox (outbox_id, topic, payload, available_at)
VALUES (%(outbox_id)s, %(topic)s, %(payload)s, COALESCE(%(available_at)s, now()))
ON CONFLICT (outbox_id) DO NOTHING

-- name: claim_pending
SELECT outbox_id, topic, payload FROM state.outbox
WHERE status = 'pending' AND available_at <= now()
ORDER BY available_at, created_at
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED

-- name: mark_sent
UPDATE state.outbox SET status = 'sent', sent_at = now(), attempts = attempts + 1
WHERE outbox_id = ANY (%(ids)s::uuid[])

-- name: mark_error
UPDATE state.outbox
SET attempts = attempts + 1, last_error = %(error)s,
    available_at = now() + make_interval(secs => %(delay)s)
WHERE outbox_id = ANY (%(ids)s::uuid[])

-- name: pending_count
SELECT count(*) FILTER (WHERE available_at <= now()), count(*)
FROM state.outbox WHERE status = 'pending'
