-- name: ensure_slots
INSERT INTO state.rpc_pool_slots (pool, slot)
SELECT %(pool)s, g FROM generate_series(0, %(slots)s - 1) AS g
ON CONFLICT DO NOTHING

-- name: acquire_slot
-- The lowest free slot below the pool's limit: never held, or held by an attempt that no
-- longer has a live lease.
WITH candidate AS (
    SELECT s.pool, s.slot
    FROM state.rpc_pool_slots s
    LEFT JOIN state.tasks t
      ON t.task_id = s.task_id AND t.attempt = s.attempt
     AND t.status = 'running' AND t.lease_expires_at > now()
    WHERE s.pool = %(pool)s AND s.slot < %(slots)s AND t.task_id IS NULL
    ORDER BY s.slot
    LIMIT 1
    FOR UPDATE OF s SKIP LOCKED
)
UPDATE state.rpc_pool_slots s
SET task_id = %(task_id)s, attempt = %(attempt)s, acquired_at = now()
FROM candidate c
WHERE s.pool = c.pool AND s.slot = c.slot
RETURNING s.slot

-- name: release_slot
UPDATE state.rpc_pool_slots SET task_id = NULL, attempt = NULL, acquired_at = NULL
WHERE pool = %(pool)s AND slot = %(slot)s AND task_id = %(task_id)s AND attempt = %(attempt)s

-- name: held_slots
SELECT count(*) FROM state.rpc_pool_slots s
JOIN state.tasks t
  ON t.task_id = s.task_id AND t.attempt = s.attempt
 AND t.status = 'running' AND t.lease_expires_at > now()
WHERE s.pool = %(pool)s
