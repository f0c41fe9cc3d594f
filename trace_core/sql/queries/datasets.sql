-- Dataset registry: datasets and their committed, immutable versions.

-- name: lock_version
-- Serialises writers of one dataset version for the rest of the transaction.
SELECT pg_advisory_xact_lock(hashtextextended(%(dataset_version)s::text, 0))

-- name: lock_dataset_shared
-- Every registration holds this until its transaction ends; compaction takes it exclusively
-- (``lock_dataset``) to check and register a window with no commit of the dataset in flight.
SELECT pg_advisory_xact_lock_shared(hashtextextended('dataset:' || %(dataset_uuid)s::text, 0))

-- name: lock_dataset
SELECT pg_advisory_xact_lock(hashtextextended('dataset:' || %(dataset_uuid)s::text, 0))

-- name: ensure_dataset
-- Insert the dataset unless present, and return its row either way (one round trip; the
-- statement's snapshot does not see its own insert, hence the UNION with ``ins``). No row:
-- the (org, chain, key) is registered under another dataset_uuid.
WITH ins AS (
    INSERT INTO state.datasets (dataset_uuid, org_id, chain_id, dataset_key)
    VALUES (%(dataset_uuid)s, %(org_id)s, %(chain_id)s, %(dataset_key)s)
    ON CONFLICT DO NOTHING
    RETURNING dataset_uuid, org_id, chain_id, dataset_key
)
SELECT dataset_uuid, org_id, chain_id, dataset_key FROM ins
UNION ALL
SELECT dataset_uuid, org_id, chain_id, dataset_key
FROM state.datasets WHERE dataset_uuid = %(dataset_uuid)s AND NOT EXISTS (SELECT FROM ins)

-- name: insert_version
-- The new version's registry record (the columns of ``get_version``), or no row when the
-- version is registered already.
WITH ins AS (
    INSERT INTO state.dataset_versions (
        dataset_version, dataset_uuid, chain_id, range_start, range_end, config_hash,
        schema_hash, storage_prefix, manifest_key, row_count, bytes, file_count, task_id,
        attempt, fake)
    VALUES (
        %(dataset_version)s, %(dataset_uuid)s, %(chain_id)s, %(range_start)s, %(range_end)s,
        %(config_hash)s, %(schema_hash)s, %(storage_prefix)s, %(manifest_key)s, %(row_count)s,
        %(bytes)s, %(file_count)s, %(task_id)s, %(attempt)s, %(fake)s)
    ON CONFLICT DO NOTHING
    RETURNING *
)
SELECT v.dataset_version, v.dataset_uuid, d.org_id, d.dataset_key, v.chain_id, v.range_start,
       v.range_end, v.config_hash, v.schema_hash, v.storage_prefix, v.manifest_key, v.row_count,
       v.bytes, v.file_count, v.task_id, v.attempt, v.created_at, v.fake,
       v.collected_at IS NOT NULL AS collected
FROM ins v JOIN state.datasets d USING (dataset_uuid)

-- name: get_version
SELECT v.dataset_version, v.dataset_uuid, d.org_id, d.dataset_key, v.chain_id, v.range_start,
       v.range_end, v.config_hash, v.schema_hash, v.storage_prefix, v.manifest_key, v.row_count,
       v.bytes, v.file_count, v.task_id, v.attempt, v.created_at, v.fake,
       v.collected_at IS NOT NULL AS collected
FROM state.dataset_versions v JOIN state.datasets d USING (dataset_uuid)
WHERE v.dataset_version = %(dataset_version)s

-- name: versions_of_dataset
SELECT v.dataset_version, v.dataset_uuid, d.org_id, d.dataset_key, v.chain_id, v.range_start,
       v.range_end, v.config_hash, v.schema_hash, v.storage_prefix, v.manifest_key, v.row_count,
       v.bytes, v.file_count, v.task_id, v.attempt, v.created_at, v.fake
FROM state.dataset_versions v JOIN state.datasets d USING (dataset_uuid)
WHERE v.dataset_uuid = %(dataset_uuid)s
  AND v.collected_at IS NULL AND v.compacted_into IS NULL
ORDER BY v.range_start, v.range_end, v.created_at DESC, v.dataset_version

-- name: versions_for_stream
SELECT v.dataset_version, v.dataset_uuid, d.org_id, d.dataset_key, v.chain_id, v.range_start,
       v.range_end, v.config_hash, v.schema_hash, v.storage_prefix, v.manifest_key, v.row_count,
       v.bytes, v.file_count, v.task_id, v.attempt, v.created_at, v.fake
FROM state.dataset_versions v JOIN state.datasets d USING (dataset_uuid)
WHERE d.org_id = %(org_id)s AND d.chain_id = %(chain_id)s AND d.dataset_key = %(dataset_key)s
  AND v.collected_at IS NULL AND v.compacted_into IS NULL
ORDER BY v.range_start, v.range_end, v.created_at DESC, v.dataset_version

-- name: running_attempts
SELECT task_id, attempt FROM state.tasks
WHERE task_id = ANY(%(task_ids)s) AND status = 'running'

-- ---------------------------------------------------------------- retention (datasets/retention.py)

-- name: live_versions
-- Every version of an org that readers still resolve (not collected), for the retention pass.
SELECT v.dataset_version, v.dataset_uuid, d.org_id, d.dataset_key, v.chain_id, v.range_start,
       v.range_end, v.config_hash, v.schema_hash, v.storage_prefix, v.manifest_key, v.row_count,
       v.bytes, v.file_count, v.task_id, v.attempt, v.created_at, v.fake
FROM state.dataset_versions v JOIN state.datasets d USING (dataset_uuid)
WHERE d.org_id = %(org_id)s AND v.collected_at IS NULL

-- name: pinned_versions
-- Versions pinned by the grants of tasks that may still read them (queued or running: their
-- capability token is or will be live).
SELECT DISTINCT g ->> 'dataset_version'
FROM state.tasks t, jsonb_array_elements(
    CASE WHEN jsonb_typeof(t.payload -> 'grants') = 'array' THEN t.payload -> 'grants'
         ELSE '[]'::jsonb END) g
WHERE t.status IN ('queued', 'running')

-- name: version_pinned
SELECT EXISTS (
    SELECT 1 FROM state.tasks t
    WHERE t.status IN ('queued', 'running')
      AND jsonb_typeof(t.payload -> 'grants') = 'array'
      AND t.payload -> 'grants' @> jsonb_build_array(
              jsonb_build_object('dataset_version', %(dataset_version)s::text)))

-- name: collect_version
-- The tombstone: the version leaves every reader's resolution (its row stays).
UPDATE state.dataset_versions SET collected_at = now()
WHERE dataset_version = %(dataset_version)s AND collected_at IS NULL
RETURNING storage_prefix

-- name: unpurged_versions
-- Collected versions whose objects are not deleted yet (a run that stopped in between).
SELECT dataset_version, storage_prefix FROM state.dataset_versions
WHERE collected_at IS NOT NULL AND purged_at IS NULL
ORDER BY collected_at

-- name: mark_purged
UPDATE state.dataset_versions SET purged_at = now()
WHERE dataset_version = %(dataset_version)s AND collected_at IS NOT NULL

-- name: revive_collected_version
-- A collected version committed again (same deterministic id): it serves again, as the newest.
UPDATE state.dataset_versions
SET collected_at = NULL, purged_at = NULL, compacted_into = NULL, created_at = clock_timestamp()
WHERE dataset_version = %(dataset_version)s AND collected_at IS NOT NULL

-- name: live_version_ids
-- Which of the given version ids are registered and not collected.
SELECT dataset_version FROM state.dataset_versions
WHERE dataset_version = ANY(%(versions)s) AND collected_at IS NULL

-- ---------------------------------------------------------------- compaction (datasets/compaction.py)

-- name: window_versions
-- Live versions overlapping a window, read again under the dataset's exclusive lock.
SELECT dataset_version FROM state.dataset_versions
WHERE dataset_uuid = %(dataset_uuid)s AND collected_at IS NULL AND compacted_into IS NULL
  AND range_start < %(end)s AND range_end > %(start)s

-- name: mark_compacted
-- The window's versions lying inside it leave readers' resolution (retention collects them);
-- the compacted version carries their verification when every one of them was verified.
WITH marked AS (
    UPDATE state.dataset_versions SET compacted_into = %(compacted)s
    WHERE dataset_uuid = %(dataset_uuid)s AND collected_at IS NULL AND compacted_into IS NULL
      AND range_start >= %(start)s AND range_end <= %(end)s
      AND dataset_version <> %(compacted)s
    RETURNING verified_at, verified_passed
)
UPDATE state.dataset_versions c
SET verified_at = i.first, verified_passed = i.passed
FROM (SELECT min(verified_at) AS first, bool_and(verified_passed) AS passed,
             count(*) FILTER (WHERE verified_at IS NULL) AS never, count(*) AS n
      FROM marked) i
WHERE c.dataset_version = %(compacted)s AND i.n > 0 AND i.never = 0 AND c.verified_at IS NULL

-- name: failed_versions
-- Live versions of a dataset whose last verification failed (compaction leaves their windows).
SELECT dataset_version FROM state.dataset_versions
WHERE dataset_uuid = %(dataset_uuid)s AND collected_at IS NULL AND verified_passed = false
