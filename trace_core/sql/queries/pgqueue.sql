-- name: publish
INSERT INTO state.queue_messages (queue_name, payload, available_at)
VALUES (%(queue)s, %(payload)s::jsonb, now() + make_interval(secs => %(delay)s))
RETURNING message_id

-- name: publish_batch
-- Ids come from one bigserial in row order, so sorting them restores the payload order.
INSERT INTO state.queue_messages (queue_name, payload, available_at)
SELECT %(queue)s, p::jsonb, now() + make_interval(secs => %(delay)s)
FROM unnest(%(payloads)b::text[]) WITH ORDINALITY AS t (p, i)
ORDER BY i
RETURNING message_id

-- name: receive
-- One statement: lock up to `limit` due rows, bury those already received
-- `max_receive_count` times, hand out the rest with a fresh receipt. Buried rows come back
-- with a NULL receipt so the caller knows the batch was short because of them.
WITH due AS (
    SELECT ctid, receive_count FROM state.queue_messages
    WHERE queue_name = %(queue)s AND available_at <= now()
    ORDER BY available_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), dead AS (
    DELETE FROM state.queue_messages m USING due
    WHERE due.receive_count > %(max_receive_count)s AND m.ctid = due.ctid
    RETURNING m.message_id, m.queue_name, m.payload, m.receive_count, m.last_error, m.created_at
), buried AS (
    INSERT INTO state.queue_dead
        (message_id, queue_name, payload, receive_count, reason, last_error, created_at)
    SELECT message_id, queue_name, payload, receive_count, 'max_receive_count', last_error, created_at
    FROM dead
    ON CONFLICT (message_id) DO UPDATE
    SET payload = EXCLUDED.payload, receive_count = EXCLUDED.receive_count,
        reason = EXCLUDED.reason, last_error = EXCLUDED.last_error, dead_at = now()
    RETURNING message_id
), got AS (
    UPDATE state.queue_messages m
    SET receipt = gen_random_uuid(),
        receive_count = m.receive_count + 1,
        available_at = now() + make_interval(secs => %(visibility)s),
        invisible_until = now() + make_interval(secs => %(visibility)s),
        first_received_at = COALESCE(m.first_received_at, now())
    FROM due
    WHERE due.receive_count <= %(max_receive_count)s AND m.ctid = due.ctid
    RETURNING m.message_id, m.receipt, m.payload, m.receive_count
)
SELECT message_id, receipt, payload, receive_count FROM got
UNION ALL
SELECT message_id, NULL, NULL, NULL FROM buried

-- name: ack
DELETE FROM state.queue_messages
WHERE message_id = %(message_id)s AND receipt = %(receipt)s

-- name: ack_batch
DELETE FROM state.queue_messages m
USING unnest(%(message_ids)b::bigint[], %(receipts)b::uuid[]) AS a (message_id, receipt)
WHERE m.message_id = a.message_id AND m.receipt = a.receipt
RETURNING m.message_id

-- name: extend
UPDATE state.queue_messages
SET available_at = now() + make_interval(secs => %(visibility)s),
    invisible_until = now() + make_interval(secs => %(visibility)s)
WHERE message_id = %(message_id)s AND receipt = %(receipt)s

-- name: nack
-- Below the limit the message becomes receivable after `delay`; at the limit it is buried
-- at once with the error (it could never be delivered again).
WITH dead AS (
    DELETE FROM state.queue_messages
    WHERE message_id = %(message_id)s AND receipt = %(receipt)s
      AND receive_count >= %(max_receive_count)s
    RETURNING message_id, queue_name, payload, receive_count, created_at
), buried AS (
    INSERT INTO state.queue_dead
        (message_id, queue_name, payload, receive_count, reason, last_error, created_at)
    SELECT message_id, queue_name, payload, receive_count, 'max_receive_count', %(error)s, created_at
    FROM dead
    ON CONFLICT (message_id) DO UPDATE
    SET payload = EXCLUDED.payload, receive_count = EXCLUDED.receive_count,
        reason = EXCLUDED.reason, last_error = EXCLUDED.last_error, dead_at = now()
    RETURNING message_id
), requeued AS (
    UPDATE state.queue_messages
    SET available_at = now() + make_interval(secs => %(delay)s), invisible_until = NULL,
        receipt = NULL, last_error = COALESCE(%(error)s, last_error)
    WHERE message_id = %(message_id)s AND receipt = %(receipt)s
      AND receive_count < %(max_receive_count)s
    RETURNING message_id
)
SELECT (SELECT count(*) FROM buried) + (SELECT count(*) FROM requeued)

-- name: stats
SELECT count(*) FILTER (WHERE invisible_until IS NULL OR invisible_until <= now()),
       count(*) FILTER (WHERE invisible_until > now()),
       EXTRACT(EPOCH FROM now() - min(created_at))::float8,
       (SELECT count(*) FROM state.queue_dead WHERE queue_name = %(queue)s)
FROM state.queue_messages
WHERE queue_name = %(queue)s

-- name: list_dead
SELECT message_id, payload, receive_count, reason, last_error
FROM state.queue_dead
WHERE queue_name = %(queue)s
ORDER BY dead_at, message_id
LIMIT %(limit)s

-- name: replay_dead
-- Back to the live queue under the same id, receivable now, receive_count reset.
WITH moved AS (
    DELETE FROM state.queue_dead
    WHERE queue_name = %(queue)s
      AND (%(message_ids)s::bigint[] IS NULL OR message_id = ANY (%(message_ids)s::bigint[]))
    RETURNING message_id, queue_name, payload
)
INSERT INTO state.queue_messages (message_id, queue_name, payload)
SELECT message_id, queue_name, payload FROM moved

-- name: purge_dead
DELETE FROM state.queue_dead
WHERE queue_name = %(queue)s
  AND (%(message_ids)s::bigint[] IS NULL OR message_id = ANY (%(message_ids)s::bigint[]))
