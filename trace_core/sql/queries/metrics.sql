-- Prometheus metrics (trace_core.query.metrics): read-only aggregates over state and data.

-- name: ranges_by_state
SELECT j.org_id::text AS org, j.name AS job, r.dataset_key AS stream, r.status, count(*) AS ranges
FROM state.chain_sync_scheduled_ranges r
JOIN state.chain_sync_jobs j USING (job_id)
GROUP BY j.org_id, j.name, r.dataset_key, r.status

-- name: stream_lag
-- Per active stream: the newest observed head of its chain on its RPC pool, the planning cursor,
-- and the low-water mark (first block not yet committed: the lowest unfinished range, else the
-- cursor).
SELECT j.org_id::text AS org, j.name AS job, s.dataset_key AS stream, h.head_block, c.next_block,
       coalesce((SELECT min(r.range_start) FROM state.chain_sync_scheduled_ranges r
                 WHERE r.job_id = s.job_id AND r.dataset_key = s.dataset_key
                   AND r.status <> 'completed'), c.next_block) AS low_water
FROM state.chain_sync_streams s
JOIN state.chain_sync_jobs j USING (job_id)
JOIN state.chain_sync_cursor c USING (job_id, dataset_key)
LEFT JOIN state.chain_head_observations h
       ON h.org_id = j.org_id AND h.chain_id = j.chain_id AND h.rpc_pool = s.rpc_pool
WHERE s.active AND j.enabled

-- name: tasks_by_status
SELECT operator, status, count(*) AS tasks FROM state.tasks GROUP BY operator, status

-- name: attempts_by_outcome
SELECT t.operator, coalesce(a.outcome, 'running') AS outcome, count(*) AS attempts
FROM state.task_attempts a
JOIN state.tasks t USING (task_id)
GROUP BY t.operator, coalesce(a.outcome, 'running')

-- name: worker_runs
SELECT count(*) FILTER (WHERE settled_at IS NULL) AS open,
       count(*) FILTER (WHERE settled_at IS NOT NULL) AS settled
FROM state.worker_runs

-- name: query_latency
-- Cumulative counts of audited queries at or under each bound (milliseconds), per outcome
-- (finished queries: a 'started' row has no duration yet).
SELECT a.outcome, b.le_ms, count(a.query_id) FILTER (WHERE a.duration_ms <= b.le_ms) AS queries
FROM unnest(%(bounds_ms)s::integer[]) AS b(le_ms)
CROSS JOIN data.query_audit a
WHERE a.outcome <> 'started'
GROUP BY a.outcome, b.le_ms

-- name: query_totals
SELECT outcome, count(*) AS queries, coalesce(sum(duration_ms), 0) AS duration_ms
FROM data.query_audit
WHERE outcome <> 'started'
GROUP BY outcome
