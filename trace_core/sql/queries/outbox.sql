-- name: insert_outbox
-- A transaction that writes an outbox row commits durably, so a drain (which may publish to an
-- external queue) only ever sees rows that survive a crash: it marks itself (trace.wakes) so a
-- later tasks.complete_success keeps the commit synchronous, and puts back the setting an
-- earlier complete_success turned off (trace.completion_sync).
INSERT INTO state.outbox (outbox_id, topic, payload, available_at)
SELECT %(outbox_id)s, %(topic)s, %(payload)s, COALESCE(%(available_at)s, now())
FROM (SELECT set_config('trace.wakes', 'on', true) AS wakes,
             CASE WHEN current_setting('trace.completion_sync', true) > ''
             THEN set_config('synchronous_commit', current_setting('trace.completion_sync'), true)
             END AS durable) AS marked
ON CONFLICT (outbox_id) DO NOTHING

-- name: insert_outbox_batch
-- insert_outbox for many rows of one topic, due now, in one statement (the same marks).
INSERT INTO state.outbox (outbox_id, topic, payload, available_at)
SELECT o.outbox_id, %(topic)s, o.payload, now()
FROM unnest(%(outbox_ids)s::uuid[], %(payloads)s::jsonb[]) AS o (outbox_id, payload),
     (SELECT set_config('trace.wakes', 'on', true) AS wakes,
             CASE WHEN current_setting('trace.completion_sync', true) > ''
             THEN set_config('synchronous_commit', current_setting('trace.completion_sync'), true)
             END AS durable) AS marked
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
