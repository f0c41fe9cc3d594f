-- Epochs (trace_core/chain_sync/epochs.py): a stream's Dagster partitions are block windows
-- [k * epoch_blocks, (k + 1) * epoch_blocks); its fine ranges stay in
-- chain_sync_scheduled_ranges. A stream's ranges never overlap (the planner plans forward from
-- a cursor), so at most one range starting before an epoch reaches into it.

-- Every stream of the org with what decides its epochs: the job's mode and bounds, the
-- planning cursor and the newest head its pool reported (follow_head).
-- name: stream_targets
SELECT s.job_id, j.name AS job_name, s.dataset_key, s.chunk_size, s.active, j.mode,
       j.from_block, j.to_block, j.tail_lag, j.epoch_blocks, c.next_block, o.head_block
FROM state.chain_sync_streams s
JOIN state.chain_sync_jobs j ON j.job_id = s.job_id
JOIN state.chain_sync_cursor c ON c.job_id = s.job_id AND c.dataset_key = s.dataset_key
LEFT JOIN state.chain_head_observations o
       ON o.org_id = j.org_id AND o.chain_id = j.chain_id AND o.rpc_pool = s.rpc_pool
WHERE j.org_id = %(org_id)s
  AND (%(job_name)s::text IS NULL OR j.name = %(job_name)s)
  AND (%(dataset_key)s::text IS NULL OR s.dataset_key = %(dataset_key)s)
ORDER BY j.name, s.dataset_key

-- Per epoch of one stream: planned, committed and dead ranges and the blocks they cover
-- inside the epoch (a range crossing a boundary counts in both epochs).
-- name: epoch_summary
SELECT e.idx AS epoch,
       count(*) AS planned,
       count(*) FILTER (WHERE r.status = 'completed') AS committed,
       count(*) FILTER (WHERE r.status = 'dead') AS dead,
       sum(LEAST(r.range_end, (e.idx + 1) * %(size)s) - GREATEST(r.range_start, e.idx * %(size)s))
           AS blocks_planned,
       COALESCE(sum(LEAST(r.range_end, (e.idx + 1) * %(size)s)
                    - GREATEST(r.range_start, e.idx * %(size)s))
                FILTER (WHERE r.status = 'completed'), 0) AS blocks_committed
FROM state.chain_sync_scheduled_ranges r
CROSS JOIN LATERAL generate_series(r.range_start / %(size)s, (r.range_end - 1) / %(size)s) AS e(idx)
WHERE r.job_id = %(job_id)s AND r.dataset_key = %(dataset_key)s
GROUP BY e.idx
ORDER BY e.idx

-- The ranges of one stream that intersect [start, end), each with its newest registered
-- version of exactly that range (a repair registers a newer one) and that version's size.
-- name: epoch_ranges
SELECT r.range_start, r.range_end, r.task_id, r.status,
       COALESCE(v.dataset_version, r.dataset_version) AS dataset_version,
       v.row_count, v.bytes
FROM (
    SELECT range_start, range_end, task_id, status, dataset_version
    FROM state.chain_sync_scheduled_ranges
    WHERE job_id = %(job_id)s AND dataset_key = %(dataset_key)s
      AND range_start >= %(start)s AND range_start < %(end)s
    UNION ALL
    SELECT * FROM (
        SELECT range_start, range_end, task_id, status, dataset_version
        FROM state.chain_sync_scheduled_ranges
        WHERE job_id = %(job_id)s AND dataset_key = %(dataset_key)s AND range_start < %(start)s
        ORDER BY range_start DESC
        LIMIT 1
    ) before
    WHERE before.range_end > %(start)s
) r
JOIN state.chain_sync_streams s ON s.job_id = %(job_id)s AND s.dataset_key = %(dataset_key)s
LEFT JOIN LATERAL (
    SELECT dv.dataset_version, dv.row_count, dv.bytes
    FROM state.dataset_versions dv
    WHERE r.status = 'completed' AND dv.dataset_uuid = s.dataset_uuid
      AND dv.range_start = r.range_start AND dv.range_end = r.range_end
    ORDER BY dv.created_at DESC
    LIMIT 1
) v ON true
ORDER BY r.range_start

-- Claim the report of an epoch's materialization for one set of range versions: a row is
-- returned to the one caller that inserted it, or (with a takeover age) that found a claim
-- older than that age (its claimer died before reporting). Everyone else gets no row.
-- name: claim_materialization
INSERT INTO state.epoch_materializations AS m
    (org_id, job_id, dataset_key, epoch_start, epoch_end, versions, claimed_by)
SELECT j.org_id, j.job_id, %(dataset_key)s, %(start)s, %(end)s, %(versions)s, %(by)s
FROM state.chain_sync_jobs j
WHERE j.org_id = %(org_id)s AND j.name = %(job_name)s
ON CONFLICT (job_id, dataset_key, epoch_start, epoch_end, versions) DO UPDATE
    SET claimed_by = EXCLUDED.claimed_by, claimed_at = now()
    WHERE %(takeover_seconds)s::double precision IS NOT NULL
      AND m.claimed_at < now() - make_interval(secs => %(takeover_seconds)s::double precision)
RETURNING m.claimed_by
