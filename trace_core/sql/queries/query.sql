-- Query Service: dataset resolution (state database) and the audit (data database).

-- name: org_versions
-- Every committed version of every dataset of an org; the caller picks per range.
SELECT d.dataset_key, v.dataset_uuid, v.dataset_version, v.chain_id, v.range_start,
       v.range_end, v.storage_prefix, v.manifest_key, v.created_at
FROM state.datasets d
JOIN state.dataset_versions v ON v.dataset_uuid = d.dataset_uuid
WHERE d.org_id = %(org_id)s
ORDER BY d.dataset_key, v.dataset_uuid, v.range_start, v.created_at DESC

-- name: job_exists
SELECT job_id FROM state.chain_sync_jobs WHERE org_id = %(org_id)s AND name = %(job)s

-- name: job_versions
-- Committed versions of the streams of one chain_sync job (relation name = stream key).
SELECT s.dataset_key, v.dataset_uuid, v.dataset_version, v.chain_id, v.range_start,
       v.range_end, v.storage_prefix, v.manifest_key, v.created_at
FROM state.chain_sync_jobs j
JOIN state.chain_sync_streams s ON s.job_id = j.job_id
JOIN state.dataset_versions v ON v.dataset_uuid = s.dataset_uuid
WHERE j.org_id = %(org_id)s AND j.name = %(job)s
ORDER BY s.dataset_key, v.dataset_uuid, v.range_start, v.created_at DESC

-- name: pinned_versions
-- The versions a task token pins, with their owning org, for the grant check.
SELECT d.org_id, d.dataset_key, v.dataset_uuid, v.dataset_version, v.chain_id,
       v.range_start, v.range_end, v.storage_prefix, v.manifest_key, v.created_at
FROM state.dataset_versions v
JOIN state.datasets d ON d.dataset_uuid = v.dataset_uuid
WHERE v.dataset_version = ANY(%(versions)s)

-- name: task_attempt
SELECT status, attempt FROM state.tasks WHERE task_id = %(task_id)s

-- name: insert_audit
INSERT INTO data.query_audit (query_id, org_id, user_sub, task_id, attempt, datasets,
                              sql_sha256, rows, bytes, duration_ms, outcome, error_code,
                              export_key)
VALUES (%(query_id)s, %(org_id)s, %(user_sub)s, %(task_id)s, %(attempt)s, %(datasets)s,
        %(sql_sha256)s, %(rows)s, %(bytes)s, %(duration_ms)s, %(outcome)s, %(error_code)s,
        %(export_key)s)
