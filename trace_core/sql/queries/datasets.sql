-- Dataset registry: datasets and their committed, immutable versions.

-- name: lock_version
-- Serialises writers of one dataset version for the rest of the transaction.
SELECT pg_advisory_xact_lock(hashtextextended(%(dataset_version)s::text, 0))

-- name: insert_dataset
INSERT INTO state.datasets (dataset_uuid, org_id, chain_id, dataset_key)
VALUES (%(dataset_uuid)s, %(org_id)s, %(chain_id)s, %(dataset_key)s)
ON CONFLICT DO NOTHING

-- name: get_dataset
SELECT dataset_uuid, org_id, chain_id, dataset_key, created_at
FROM state.datasets WHERE dataset_uuid = %(dataset_uuid)s

-- name: insert_version
INSERT INTO state.dataset_versions (
    dataset_version, dataset_uuid, chain_id, range_start, range_end, config_hash, schema_hash,
    storage_prefix, manifest_key, row_count, bytes, file_count, task_id, attempt, fake)
VALUES (
    %(dataset_version)s, %(dataset_uuid)s, %(chain_id)s, %(range_start)s, %(range_end)s,
    %(config_hash)s, %(schema_hash)s, %(storage_prefix)s, %(manifest_key)s, %(row_count)s,
    %(bytes)s, %(file_count)s, %(task_id)s, %(attempt)s, %(fake)s)
ON CONFLICT DO NOTHING
RETURNING dataset_version

-- name: get_version
SELECT v.dataset_version, v.dataset_uuid, d.org_id, d.dataset_key, v.chain_id, v.range_start,
       v.range_end, v.config_hash, v.schema_hash, v.storage_prefix, v.manifest_key, v.row_count,
       v.bytes, v.file_count, v.task_id, v.attempt, v.created_at, v.fake
FROM state.dataset_versions v JOIN state.datasets d USING (dataset_uuid)
WHERE v.dataset_version = %(dataset_version)s

-- name: versions_of_dataset
SELECT v.dataset_version, v.dataset_uuid, d.org_id, d.dataset_key, v.chain_id, v.range_start,
       v.range_end, v.config_hash, v.schema_hash, v.storage_prefix, v.manifest_key, v.row_count,
       v.bytes, v.file_count, v.task_id, v.attempt, v.created_at, v.fake
FROM state.dataset_versions v JOIN state.datasets d USING (dataset_uuid)
WHERE v.dataset_uuid = %(dataset_uuid)s
ORDER BY v.range_start, v.range_end, v.created_at DESC, v.dataset_version

-- name: versions_for_stream
SELECT v.dataset_version, v.dataset_uuid, d.org_id, d.dataset_key, v.chain_id, v.range_start,
       v.range_end, v.config_hash, v.schema_hash, v.storage_prefix, v.manifest_key, v.row_count,
       v.bytes, v.file_count, v.task_id, v.attempt, v.created_at, v.fake
FROM state.dataset_versions v JOIN state.datasets d USING (dataset_uuid)
WHERE d.org_id = %(org_id)s AND d.chain_id = %(chain_id)s AND d.dataset_key = %(dataset_key)s
ORDER BY v.range_start, v.range_end, v.created_at DESC, v.dataset_version

-- name: running_attempts
SELECT task_id, attempt FROM state.tasks
WHERE task_id = ANY(%(task_ids)s) AND status = 'running'
