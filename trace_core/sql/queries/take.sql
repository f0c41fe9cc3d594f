-- A worker's take at pgqueue (state.queue_messages lives in the state database): ack the
-- wake-ups it finished (stale receipts match nothing), lock up to `limit` due wake-ups below
-- their receive limit (SKIP LOCKED), claim every task they name that is queued, due, unpaused,
-- with attempts left and not in `skip` (the claim_queued rules), and settle the wake-ups of
-- tasks claimed here, finished (succeeded or dead) or unknown, and malformed ones (deleted:
-- acked). The rest are received as `receive` does (fresh receipt, hidden for `visibility`)
-- for the caller's full claim (a lease to take over, a backoff, a pause). One transaction: a
-- wake-up is settled if and only if its claim commits. A claim must be durable, so a statement
-- that claims sets synchronous_commit on for its own commit (the connection may run with it
-- off). Rows: (kind, message id, receipt, payload, receive count, the lease's columns).
-- Every row it touches is reached by key (`= ANY (ARRAY(...))`, a correlated lookup), so
-- even on a state connection without pgqueue's planner options a generic plan made on a
-- parameter LIMIT does not hash-join a sequential scan of the whole queue (or tasks) table
-- (the due scan still wants them: a worker run's takes have them, Runtime.reused_state).
-- (This note sits above the block: psycopg caches a query's conversion only up to 4 kB.)

-- name: take
WITH acked AS (
    DELETE FROM state.queue_messages m
    WHERE m.message_id = ANY (%(message_ids)b::bigint[])
      AND (m.message_id, m.receipt) IN (
          SELECT * FROM unnest(%(message_ids)b::bigint[], %(receipts)b::uuid[]))
    RETURNING m.message_id, m.receipt
), picked AS MATERIALIZED (
    SELECT message_id,
           CASE WHEN payload ->> 'task_id' ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
           THEN (payload ->> 'task_id')::uuid END AS task_id
    FROM state.queue_messages
    WHERE queue_name = %(queue)s AND available_at <= now()
      AND receive_count < %(max_receive_count)s
      AND message_id <> ALL (%(message_ids)b::bigint[])
    ORDER BY available_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), granted AS (
    UPDATE state.tasks t
    SET status = 'running', attempt = t.attempt + 1, lease_token = gen_random_uuid(),
        lease_expires_at = now() + make_interval(secs => %(lease_seconds)s),
        started_at = COALESCE(t.started_at, now()), updated_at = now()
    WHERE t.task_id = ANY (ARRAY(SELECT task_id FROM picked WHERE task_id IS NOT NULL))
      -- IS TRUE: neither an index condition nor the queued index's predicate (by key only)
      AND (t.status = 'queued' AND t.next_run_at <= now()) IS TRUE AND NOT t.paused
      AND t.attempt - t.attempt_base < t.max_attempts
      AND t.task_id <> ALL (%(skip)b::uuid[])
    RETURNING t.task_id, t.attempt, t.lease_token, t.lease_expires_at, t.operator, t.payload,
              t.max_attempts, t.attempt_base, t.org_id
), recorded AS (
    -- the task's org given, so the org trigger skips its lookup of the task
    INSERT INTO state.task_attempts (task_id, attempt, org_id)
    SELECT task_id, attempt, org_id FROM granted
    ON CONFLICT DO NOTHING
), settled AS (
    DELETE FROM state.queue_messages m
    WHERE m.message_id = ANY (ARRAY(
        SELECT p.message_id FROM picked p
        WHERE p.task_id IS NULL
           OR p.task_id IN (SELECT task_id FROM granted)
           OR COALESCE((SELECT t.status FROM state.tasks t WHERE t.task_id = p.task_id),
                       'dead') IN ('succeeded', 'dead')
    ))
    RETURNING m.message_id
), received AS (
    UPDATE state.queue_messages m
    SET receipt = gen_random_uuid(), receive_count = m.receive_count + 1,
        available_at = now() + make_interval(secs => %(visibility)s),
        invisible_until = now() + make_interval(secs => %(visibility)s),
        first_received_at = COALESCE(m.first_received_at, now())
    WHERE m.message_id = ANY (ARRAY(
        SELECT message_id FROM picked WHERE message_id NOT IN (SELECT message_id FROM settled)
    ))
    RETURNING m.message_id, m.receipt, m.payload, m.receive_count
)
SELECT 'acked', message_id, receipt, NULL::jsonb, NULL::integer, NULL::uuid, NULL::integer,
       NULL::uuid, NULL::timestamptz, NULL::text, NULL::integer, NULL::integer, NULL::uuid
FROM acked
UNION ALL
SELECT 'settled', message_id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
FROM settled
UNION ALL
SELECT 'received', message_id, receipt, payload, receive_count, NULL, NULL, NULL, NULL, NULL,
       NULL, NULL, NULL
FROM received
UNION ALL
SELECT 'claimed' || left(set_config('synchronous_commit', 'on', true), 0), NULL, NULL, payload,
       NULL, task_id, attempt, lease_token, lease_expires_at, operator, max_attempts,
       attempt_base, org_id
FROM granted
