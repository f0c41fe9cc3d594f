-- chain_sync: apply, pause/resume, planner, completion hooks, head observations, status.
-- Ranges are end-exclusive. Times are the database's now(), never a worker's clock.

-- ---------------------------------------------------------------- apply / store

-- name: lock_job_by_name
SELECT job_id, chain_id, yaml_hash, source_file, enabled
FROM state.chain_sync_jobs
WHERE org_id = %(org_id)s AND name = %(name)s
FOR UPDATE

-- name: insert_job
INSERT INTO state.chain_sync_jobs (
    job_id, org_id, name, chain_id, mode, from_block, to_block, tail_lag,
    head_poll_interval_seconds, max_head_age_seconds, finality_depth, max_attempts,
    epoch_blocks, yaml_hash, spec, source_file)
VALUES (
    %(job_id)s, %(org_id)s, %(name)s, %(chain_id)s, %(mode)s, %(from_block)s, %(to_block)s,
    %(tail_lag)s, %(head_poll_interval_seconds)s, %(max_head_age_seconds)s, %(finality_depth)s,
    %(max_attempts)s, %(epoch_blocks)s, %(yaml_hash)s, %(spec)s, %(source_file)s)
ON CONFLICT (org_id, name) DO NOTHING
RETURNING job_id

-- name: update_job
UPDATE state.chain_sync_jobs
SET mode = %(mode)s, from_block = %(from_block)s, to_block = %(to_block)s,
    tail_lag = %(tail_lag)s, head_poll_interval_seconds = %(head_poll_interval_seconds)s,
    max_head_age_seconds = %(max_head_age_seconds)s, finality_depth = %(finality_depth)s,
    max_attempts = %(max_attempts)s, epoch_blocks = %(epoch_blocks)s,
    yaml_hash = %(yaml_hash)s, spec = %(spec)s,
    source_file = %(source_file)s, last_error_kind = NULL, last_error_message = NULL,
    last_error_at = NULL, updated_at = now()
WHERE job_id = %(job_id)s

-- name: update_source_file
UPDATE state.chain_sync_jobs SET source_file = %(source_file)s WHERE job_id = %(job_id)s

-- name: job_stream_names
SELECT dataset_key, cryo_dataset_name FROM state.chain_sync_streams WHERE job_id = %(job_id)s

-- name: upsert_stream
INSERT INTO state.chain_sync_streams (
    job_id, dataset_key, cryo_dataset_name, rpc_pool, chunk_size, max_inflight, config_hash,
    dataset_uuid, cryo_options)
VALUES (
    %(job_id)s, %(dataset_key)s, %(cryo_dataset_name)s, %(rpc_pool)s, %(chunk_size)s,
    %(max_inflight)s, %(config_hash)s, %(dataset_uuid)s, %(cryo_options)s)
ON CONFLICT (job_id, dataset_key) DO UPDATE
SET cryo_dataset_name = EXCLUDED.cryo_dataset_name, rpc_pool = EXCLUDED.rpc_pool,
    chunk_size = EXCLUDED.chunk_size, max_inflight = EXCLUDED.max_inflight,
    config_hash = EXCLUDED.config_hash, dataset_uuid = EXCLUDED.dataset_uuid,
    cryo_options = EXCLUDED.cryo_options, active = true, updated_at = now()

-- name: deactivate_missing_streams
UPDATE state.chain_sync_streams SET active = false, updated_at = now()
WHERE job_id = %(job_id)s AND active AND NOT (dataset_key = ANY(%(keys)s))

-- name: upsert_cursor
INSERT INTO state.chain_sync_cursor (job_id, dataset_key, next_block)
VALUES (%(job_id)s, %(dataset_key)s, %(from_block)s)
ON CONFLICT (job_id, dataset_key) DO UPDATE
SET next_block = GREATEST(state.chain_sync_cursor.next_block, EXCLUDED.next_block),
    updated_at = now()
WHERE state.chain_sync_cursor.next_block < EXCLUDED.next_block

-- name: register_dataset
INSERT INTO state.datasets (dataset_uuid, org_id, chain_id, dataset_key)
VALUES (%(dataset_uuid)s, %(org_id)s, %(chain_id)s, %(dataset_key)s)
ON CONFLICT DO NOTHING

-- name: find_job_by_id
SELECT job_id FROM state.chain_sync_jobs WHERE org_id = %(org_id)s AND job_id = %(job_id)s

-- name: find_job_by_name
SELECT job_id FROM state.chain_sync_jobs WHERE org_id = %(org_id)s AND name = %(name)s

-- name: set_enabled
UPDATE state.chain_sync_jobs SET enabled = %(enabled)s, updated_at = now()
WHERE job_id = %(job_id)s AND enabled <> %(enabled)s
RETURNING job_id

-- name: list_jobs
SELECT job_id, org_id, name, chain_id, enabled, mode, from_block, to_block, tail_lag,
       head_poll_interval_seconds, max_head_age_seconds, finality_depth, max_attempts,
       epoch_blocks, yaml_hash, source_file, last_error_kind, last_error_message, last_error_at,
       created_at, updated_at
FROM state.chain_sync_jobs
WHERE org_id = %(org_id)s AND (%(job_id)s::uuid IS NULL OR job_id = %(job_id)s)
ORDER BY updated_at DESC, name

-- name: list_streams
SELECT s.job_id, j.name AS job_name, j.chain_id, s.dataset_key, s.cryo_dataset_name,
       s.rpc_pool, s.chunk_size, s.max_inflight, s.config_hash, s.dataset_uuid,
       s.cryo_options, s.active, c.next_block, j.epoch_blocks
FROM state.chain_sync_streams s
JOIN state.chain_sync_jobs j ON j.job_id = s.job_id
JOIN state.chain_sync_cursor c ON c.job_id = s.job_id AND c.dataset_key = s.dataset_key
WHERE j.org_id = %(org_id)s
  AND (%(job_id)s::uuid IS NULL OR s.job_id = %(job_id)s)
  AND (s.active OR %(include_inactive)s)
ORDER BY j.name, s.dataset_key

-- name: list_ranges
SELECT r.job_id, j.name AS job_name, r.dataset_key, r.range_start, r.range_end, r.task_id,
       r.status, r.dataset_version, r.created_at, r.completed_at
FROM state.chain_sync_scheduled_ranges r
JOIN state.chain_sync_jobs j ON j.job_id = r.job_id
WHERE r.job_id = %(job_id)s
  AND (%(dataset_key)s::text IS NULL OR r.dataset_key = %(dataset_key)s)
  AND (%(status)s::text IS NULL OR r.status = %(status)s)
ORDER BY r.dataset_key, r.range_start

-- ---------------------------------------------------------------- planner

-- name: plannable_streams
SELECT j.job_id, s.dataset_key
FROM state.chain_sync_jobs j
JOIN state.chain_sync_streams s ON s.job_id = j.job_id
WHERE j.enabled AND s.active AND (%(org_id)s::uuid IS NULL OR j.org_id = %(org_id)s)
ORDER BY j.updated_at, j.created_at, s.dataset_key

-- Shared lock on the job first (apply and pause lock it exclusively), so a pause or edit waits
-- for a planning transaction in flight and then sees its tasks, and vice versa.
-- name: share_lock_job
SELECT job_id, org_id, name, chain_id, mode, from_block, to_block, tail_lag,
       max_head_age_seconds, max_attempts, epoch_blocks
FROM state.chain_sync_jobs
WHERE job_id = %(job_id)s AND enabled
FOR SHARE

-- name: lock_stream_cursor
SELECT s.dataset_key, s.cryo_dataset_name, s.rpc_pool, s.chunk_size, s.max_inflight,
       s.config_hash, s.dataset_uuid, s.cryo_options, c.next_block
FROM state.chain_sync_cursor c
JOIN state.chain_sync_streams s ON s.job_id = c.job_id AND s.dataset_key = c.dataset_key
WHERE c.job_id = %(job_id)s AND c.dataset_key = %(dataset_key)s AND s.active
FOR UPDATE OF c

-- name: head_for_pool
SELECT head_block, EXTRACT(EPOCH FROM now() - observed_at)::float8 AS age_seconds
FROM state.chain_head_observations
WHERE org_id = %(org_id)s AND chain_id = %(chain_id)s AND rpc_pool = %(rpc_pool)s

-- name: stream_range_counts
SELECT count(*) FILTER (WHERE status = 'scheduled') AS inflight,
       count(*) FILTER (WHERE status = 'dead') AS dead
FROM state.chain_sync_scheduled_ranges
WHERE job_id = %(job_id)s AND dataset_key = %(dataset_key)s AND status IN ('scheduled', 'dead')

-- name: insert_range
INSERT INTO state.chain_sync_scheduled_ranges (job_id, dataset_key, range_start, range_end, task_id)
VALUES (%(job_id)s, %(dataset_key)s, %(range_start)s, %(range_end)s, %(task_id)s)
ON CONFLICT DO NOTHING
RETURNING task_id

-- name: advance_cursor
UPDATE state.chain_sync_cursor SET next_block = %(next_block)s, updated_at = now()
WHERE job_id = %(job_id)s AND dataset_key = %(dataset_key)s AND next_block < %(next_block)s

-- name: set_job_error
UPDATE state.chain_sync_jobs
SET last_error_kind = %(kind)s, last_error_message = %(message)s, last_error_at = now()
WHERE job_id = %(job_id)s
  AND (last_error_kind, last_error_message) IS DISTINCT FROM (%(kind)s::text, %(message)s::text)

-- name: clear_job_error
UPDATE state.chain_sync_jobs
SET last_error_kind = NULL, last_error_message = NULL, last_error_at = NULL
WHERE job_id = %(job_id)s AND last_error_kind = ANY(%(kinds)s)

-- ---------------------------------------------------------------- completion hooks

-- name: range_for_task
SELECT r.job_id, j.org_id, j.name AS job_name, j.chain_id, r.dataset_key, r.range_start,
       r.range_end, r.task_id, r.status, r.dataset_version, s.dataset_uuid, s.config_hash
FROM state.chain_sync_scheduled_ranges r
JOIN state.chain_sync_jobs j ON j.job_id = r.job_id
JOIN state.chain_sync_streams s ON s.job_id = r.job_id AND s.dataset_key = r.dataset_key
WHERE r.task_id = %(task_id)s

-- name: complete_range
UPDATE state.chain_sync_scheduled_ranges
SET status = 'completed', dataset_version = %(dataset_version)s, completed_at = now(),
    updated_at = now(),
    fake = COALESCE((SELECT v.fake FROM state.dataset_versions v
                     WHERE v.dataset_version = %(dataset_version)s), false)
WHERE task_id = %(task_id)s AND status <> 'completed'
RETURNING task_id

-- name: range_state
SELECT status, dataset_version FROM state.chain_sync_scheduled_ranges
WHERE task_id = %(task_id)s FOR UPDATE

-- name: kill_range
UPDATE state.chain_sync_scheduled_ranges SET status = 'dead', updated_at = now()
WHERE task_id = %(task_id)s AND status = 'scheduled'
RETURNING task_id

-- name: revive_range
UPDATE state.chain_sync_scheduled_ranges SET status = 'scheduled', updated_at = now()
WHERE task_id = %(task_id)s AND status = 'dead'
RETURNING task_id

-- ---------------------------------------------------------------- retry (chain_sync/retry.py)

-- Ranges of a job (one stream, one exact range or every range inside a window such as an
-- epoch, or only the dead ones) with their task's state.
-- name: ranges_for_retry
SELECT r.dataset_key, r.range_start, r.range_end, r.task_id, r.status, r.dataset_version,
       t.status AS task_status, t.attempt, t.outputs, t.payload
FROM state.chain_sync_scheduled_ranges r
LEFT JOIN state.tasks t ON t.task_id = r.task_id
WHERE r.job_id = %(job_id)s
  AND (%(dataset_key)s::text IS NULL OR r.dataset_key = %(dataset_key)s)
  AND (%(range_start)s::bigint IS NULL
       OR (NOT %(window)s AND r.range_start = %(range_start)s AND r.range_end = %(range_end)s)
       OR (%(window)s AND r.range_start >= %(range_start)s AND r.range_end <= %(range_end)s))
  AND (NOT %(dead_only)s OR r.status = 'dead')
ORDER BY r.dataset_key, r.range_start

-- Dead ranges with their task's last error (the first per_stream of each stream, by block).
-- name: dead_ranges
SELECT dataset_key, range_start, range_end, task_id, attempt, attempt_base, max_attempts,
       revives, last_error_kind, last_error, died_at
FROM (
    SELECT r.dataset_key, r.range_start, r.range_end, r.task_id, t.attempt, t.attempt_base,
           t.max_attempts, t.revives, t.last_error_kind, t.last_error,
           COALESCE(t.finished_at, r.updated_at) AS died_at,
           row_number() OVER (PARTITION BY r.dataset_key ORDER BY r.range_start) AS n
    FROM state.chain_sync_scheduled_ranges r
    LEFT JOIN state.tasks t ON t.task_id = r.task_id
    WHERE r.job_id = %(job_id)s AND r.status = 'dead'
) d
WHERE n <= %(per_stream)s
ORDER BY dataset_key, range_start

-- ---------------------------------------------------------------- head observer

-- Pools due for a poll: enabled follow_head jobs' active streams, grouped by (chain, pool),
-- polled at the fastest interval any of their jobs asks for.
-- name: due_head_pools
SELECT g.chain_id, g.rpc_pool, g.poll_seconds, o.last_error_kind
FROM (
    SELECT j.chain_id, s.rpc_pool, MIN(j.head_poll_interval_seconds) AS poll_seconds
    FROM state.chain_sync_jobs j
    JOIN state.chain_sync_streams s ON s.job_id = j.job_id AND s.active
    WHERE j.org_id = %(org_id)s AND j.enabled AND j.mode = 'follow_head'
    GROUP BY j.chain_id, s.rpc_pool
) g
LEFT JOIN state.chain_head_observations o
       ON o.org_id = %(org_id)s AND o.chain_id = g.chain_id AND o.rpc_pool = g.rpc_pool
WHERE o.checked_at IS NULL OR o.checked_at <= now() - make_interval(secs => g.poll_seconds)
ORDER BY g.chain_id, g.rpc_pool

-- name: record_head
INSERT INTO state.chain_head_observations (
    org_id, chain_id, rpc_pool, head_block, observed_at, source, checked_at)
VALUES (%(org_id)s, %(chain_id)s, %(rpc_pool)s, %(head_block)s,
        COALESCE(%(observed_at)s, now()), %(source)s, COALESCE(%(observed_at)s, now()))
ON CONFLICT (org_id, chain_id, rpc_pool) DO UPDATE
SET head_block = EXCLUDED.head_block, observed_at = EXCLUDED.observed_at,
    source = EXCLUDED.source, checked_at = EXCLUDED.checked_at, last_error_kind = NULL,
    last_error_message = NULL, updated_at = now()
RETURNING head_block, observed_at

-- name: record_head_failure
INSERT INTO state.chain_head_observations (
    org_id, chain_id, rpc_pool, source, last_error_kind, last_error_message)
VALUES (%(org_id)s, %(chain_id)s, %(rpc_pool)s, %(source)s, %(kind)s, %(message)s)
ON CONFLICT (org_id, chain_id, rpc_pool) DO UPDATE
SET checked_at = now(), last_error_kind = EXCLUDED.last_error_kind,
    last_error_message = EXCLUDED.last_error_message, updated_at = now()

-- ---------------------------------------------------------------- status

-- name: status_streams
SELECT s.dataset_key, s.cryo_dataset_name, s.rpc_pool, s.chunk_size, s.max_inflight,
       s.dataset_uuid, s.config_hash, s.active, c.next_block,
       COALESCE(sr.scheduled, 0) AS scheduled, COALESCE(sr.running, 0) AS running,
       COALESCE(sr.retrying, 0) AS retrying, COALESCE(cr.completed, 0) AS completed,
       COALESCE(dr.dead, 0) AS dead, COALESCE(cr.completed_blocks, 0) AS completed_blocks,
       COALESCE(rr.recent_blocks, 0) AS recent_blocks,
       EXTRACT(EPOCH FROM now() - GREATEST(rr.recent_first_planned,
               now() - make_interval(secs => %(window_seconds)s)))::float8 AS recent_span_seconds,
       dr.first_dead_start, dr.first_dead_end, dr.first_dead_task,
       COALESCE(cr.fake_ranges, 0) AS fake_ranges,
       o.head_block, EXTRACT(EPOCH FROM now() - o.observed_at)::float8 AS head_age_seconds,
       o.last_error_kind AS head_error_kind, o.last_error_message AS head_error_message
FROM state.chain_sync_streams s
JOIN state.chain_sync_jobs j ON j.job_id = s.job_id
JOIN state.chain_sync_cursor c ON c.job_id = s.job_id AND c.dataset_key = s.dataset_key
-- One aggregate per status, each over its own rows (the status indexes): completed rows are
-- ~all of a long history and are only counted, summed and checked for fake versions; tasks
-- are joined for the few scheduled rows only (issue 25: 100k ranges).
LEFT JOIN LATERAL (
    SELECT count(*) FILTER (WHERE NOT COALESCE(t.leased, false)) AS scheduled,
           count(*) FILTER (WHERE COALESCE(t.leased, false)) AS running,
           count(*) FILTER (WHERE t.status = 'queued' AND t.attempt > 0) AS retrying
    FROM state.chain_sync_scheduled_ranges r
    LEFT JOIN LATERAL (
        SELECT t.status, t.attempt,
               (t.status = 'running' AND t.lease_expires_at > now()) AS leased
        FROM state.tasks t WHERE t.task_id = r.task_id
    ) t ON true
    WHERE r.job_id = s.job_id AND r.dataset_key = s.dataset_key AND r.status = 'scheduled'
) sr ON true
LEFT JOIN LATERAL (
    SELECT count(*) AS completed,
           sum(GREATEST(0, LEAST(r.range_end, j.to_block) - GREATEST(r.range_start, j.from_block)))
               AS completed_blocks,
           count(*) FILTER (WHERE r.fake) AS fake_ranges
    FROM state.chain_sync_scheduled_ranges r
    WHERE r.job_id = s.job_id AND r.dataset_key = s.dataset_key AND r.status = 'completed'
) cr ON true
LEFT JOIN LATERAL (
    SELECT sum(r.range_end - r.range_start) AS recent_blocks,
           min(r.created_at) AS recent_first_planned
    FROM state.chain_sync_scheduled_ranges r
    WHERE r.job_id = s.job_id AND r.dataset_key = s.dataset_key AND r.status = 'completed'
      AND r.completed_at >= now() - make_interval(secs => %(window_seconds)s)
) rr ON true
LEFT JOIN LATERAL (
    SELECT count(*) AS dead, min(r.range_start) AS first_dead_start,
           (array_agg(r.range_end ORDER BY r.range_start))[1] AS first_dead_end,
           (array_agg(r.task_id ORDER BY r.range_start))[1] AS first_dead_task
    FROM state.chain_sync_scheduled_ranges r
    WHERE r.job_id = s.job_id AND r.dataset_key = s.dataset_key AND r.status = 'dead'
) dr ON true
LEFT JOIN state.chain_head_observations o
       ON o.org_id = j.org_id AND o.chain_id = j.chain_id AND o.rpc_pool = s.rpc_pool
WHERE s.job_id = %(job_id)s AND s.active
ORDER BY s.dataset_key

-- ---------------------------------------------------------------- hot path

-- name: hot_jobs
-- Jobs with a `hot:` block (of one org, or of every org when org_id is NULL: the hot
-- services), the newest head any of the org's pools saw for their chain, and the org's
-- follower cursor on the chain; by chain, then org, then name.
SELECT j.job_id, j.name, j.chain_id, j.enabled, j.mode, j.from_block, j.to_block, j.tail_lag,
       j.spec -> 'hot' AS hot,
       (SELECT max(o.head_block) FROM state.chain_head_observations o
        WHERE o.org_id = j.org_id AND o.chain_id = j.chain_id) AS observed_head,
       c.first_block AS hot_first_block, c.block_number AS hot_cursor, j.org_id
FROM state.chain_sync_jobs j
LEFT JOIN state.hot_follower_cursors c ON c.org_id = j.org_id AND c.chain_id = j.chain_id
WHERE (%(org_id)s::uuid IS NULL OR j.org_id = %(org_id)s)
  AND jsonb_typeof(j.spec -> 'hot') = 'object'
  AND (%(job_id)s::uuid IS NULL OR j.job_id = %(job_id)s)
  AND (j.enabled OR NOT %(enabled_only)s)
ORDER BY j.chain_id, j.org_id, j.name

-- name: jobs_with_analytics
-- Names of the org's jobs with an `analytics:` block (scheduled compaction leaves their streams
-- alone: their analytics are keyed by the input versions compaction replaces).
SELECT name FROM state.chain_sync_jobs
WHERE org_id = %(org_id)s AND jsonb_typeof(spec -> 'analytics') = 'object'
