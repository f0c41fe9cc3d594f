-- Integrity checks, repairs and the consumption of data invalidations (issue 14).

-- name: count_range_versions
-- Versions of one exact range already registered: the next repair's generation.
SELECT count(*) FROM state.dataset_versions
WHERE dataset_uuid = %(dataset_uuid)s AND range_start = %(range_start)s
  AND range_end = %(range_end)s

-- name: insert_correction
INSERT INTO data.data_invalidations (chain_id, range_start, range_end, reason, details)
VALUES (%(chain_id)s, %(range_start)s, %(range_end)s, 'correction', %(details)s)
ON CONFLICT ((details->>'task_id')) WHERE reason = 'correction' DO NOTHING

-- name: pending_invalidations
-- Every org's (consumed by the system): each row is consumed as its own org's.
SELECT invalidation_id, org_id, chain_id, range_start, range_end, reason, detected_at, details
FROM data.data_invalidations
WHERE consumed_at IS NULL
ORDER BY invalidation_id
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED

-- name: versions_overlapping
-- Committed versions of a chain's datasets over [range_start, range_end) (range_end NULL:
-- every block from range_start up) that were registered before the invalidation was detected
-- (later ones already hold the new data).
SELECT v.dataset_version, v.dataset_uuid, d.dataset_key, v.range_start, v.range_end,
       v.config_hash, v.created_at
FROM state.dataset_versions v JOIN state.datasets d USING (dataset_uuid)
WHERE d.org_id = %(org_id)s AND v.chain_id = %(chain_id)s
  AND (%(range_end)s::bigint IS NULL OR v.range_start < %(range_end)s)
  AND v.range_end > %(range_start)s
  AND v.created_at < %(detected_at)s
  AND v.collected_at IS NULL
ORDER BY d.dataset_key, v.range_start

-- name: stale_alert_events
-- The org's events over invalidated blocks (range_end NULL: from range_start up) that no
-- evaluation has re-produced since the invalidation (another org's reorg is not this org's).
UPDATE data.alert_events
SET stale_at = now(), stale_reason = %(reason)s
WHERE org_id = %(org_id)s AND chain_id = %(chain_id)s AND block_number >= %(range_start)s
  AND (%(range_end)s::bigint IS NULL OR block_number < %(range_end)s) AND stale_at IS NULL
  AND (revalidated_at IS NULL OR revalidated_at < %(detected_at)s)
  AND created_at < %(detected_at)s
RETURNING dedupe_key

-- name: mark_consumed
UPDATE data.data_invalidations SET consumed_at = now(), consumed = %(consumed)s
WHERE invalidation_id = %(invalidation_id)s AND consumed_at IS NULL

-- name: revalidate_alert_events
-- The sink wrote these keys again (an evaluation re-produced them): no longer stale.
UPDATE data.alert_events
SET stale_at = NULL, stale_reason = NULL, revalidated_at = now()
WHERE dedupe_key = ANY (%(keys)s::text[])

-- ---------------------------------------------------------------- incremental verification

-- name: verification_state
-- When each live version of the datasets was last verified (NULL: never: new or changed).
SELECT dataset_version, verified_at
FROM state.dataset_versions
WHERE dataset_uuid = ANY(%(dataset_uuids)s) AND collected_at IS NULL

-- name: record_verification
UPDATE state.dataset_versions SET verified_at = now(), verified_passed = %(passed)s
WHERE dataset_version = %(dataset_version)s

-- name: versions_committed_since
-- Live versions of the org's datasets registered after a time (epoch seconds): whether
-- there is anything new for an integrity pass to verify.
SELECT count(*)
FROM state.dataset_versions v JOIN state.datasets d USING (dataset_uuid)
WHERE d.org_id = %(org_id)s AND v.collected_at IS NULL
  AND v.created_at > to_timestamp(%(since)s)
