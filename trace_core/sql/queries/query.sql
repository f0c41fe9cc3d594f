-- Query Service: dataset resolution (state database) and the audit (data database).
-- Version rows carry the columns of trace_core.datasets.registry.VersionRecord.

-- name: org_versions
-- Every committed version of every dataset of an org; the caller picks per range.
SELECT v.dataset_version, v.dataset_uuid, d.org_id, d.dataset_key, v.chain_id, v.range_start,
       v.range_end, v.config_hash, v.schema_hash, v.storage_prefix, v.manifest_key, v.row_count,
       v.bytes, v.file_count, v.task_id, v.attempt, v.created_at, v.fake
FROM state.datasets d
JOIN state.dataset_versions v ON v.dataset_uuid = d.dataset_uuid
WHERE d.org_id = %(org_id)s
  AND v.collected_at IS NULL AND v.compacted_into IS NULL

-- name: registry_generation
-- Bumped with every committed change to the org's registry (state migration 0085).
SELECT registry_generation FROM state.orgs WHERE org_id = %(org_id)s

-- name: job_exists
-- The job, its chain and its `analytics:` block (NULL without one).
SELECT job_id, chain_id, spec -> 'analytics' AS analytics
FROM state.chain_sync_jobs WHERE org_id = %(org_id)s AND name = %(job)s

-- name: job_versions
-- Committed versions of the streams of one chain_sync job (relation name = stream key).
SELECT v.dataset_version, v.dataset_uuid, d.org_id, d.dataset_key, v.chain_id, v.range_start,
       v.range_end, v.config_hash, v.schema_hash, v.storage_prefix, v.manifest_key, v.row_count,
       v.bytes, v.file_count, v.task_id, v.attempt, v.created_at, v.fake
FROM state.chain_sync_jobs j
JOIN state.chain_sync_streams s ON s.job_id = j.job_id
JOIN state.datasets d ON d.dataset_uuid = s.dataset_uuid AND d.org_id = j.org_id
JOIN state.dataset_versions v ON v.dataset_uuid = d.dataset_uuid
WHERE j.org_id = %(org_id)s AND j.name = %(job)s
  AND v.collected_at IS NULL AND v.compacted_into IS NULL

-- name: job_analytics_versions
-- Committed versions of the analytics outputs a job produces (its own datasets
-- `analytics_<name>__<job tag>` on its chain; the caller passes their keys).
SELECT v.dataset_version, v.dataset_uuid, d.org_id, d.dataset_key, v.chain_id, v.range_start,
       v.range_end, v.config_hash, v.schema_hash, v.storage_prefix, v.manifest_key, v.row_count,
       v.bytes, v.file_count, v.task_id, v.attempt, v.created_at, v.fake
FROM state.datasets d
JOIN state.dataset_versions v ON v.dataset_uuid = d.dataset_uuid
WHERE d.org_id = %(org_id)s AND v.chain_id = %(chain_id)s
  AND v.collected_at IS NULL AND v.compacted_into IS NULL
  AND d.dataset_key = ANY(%(keys)s::text[])

-- name: pinned_versions
-- The versions a task token pins; the caller checks org, dataset and manifest key.
SELECT v.dataset_version, v.dataset_uuid, d.org_id, d.dataset_key, v.chain_id, v.range_start,
       v.range_end, v.config_hash, v.schema_hash, v.storage_prefix, v.manifest_key, v.row_count,
       v.bytes, v.file_count, v.task_id, v.attempt, v.created_at, v.fake
FROM state.dataset_versions v
JOIN state.datasets d ON d.dataset_uuid = v.dataset_uuid
WHERE v.dataset_version = ANY(%(versions)s)
  AND v.collected_at IS NULL

-- name: task_attempt
SELECT status, attempt FROM state.tasks WHERE task_id = %(task_id)s

-- name: insert_audit
INSERT INTO data.query_audit (query_id, org_id, user_sub, task_id, attempt, datasets,
                              sql_sha256, rows, bytes, duration_ms, outcome, error_code,
                              export_key)
VALUES (%(query_id)s, %(org_id)s, %(user_sub)s, %(task_id)s, %(attempt)s, %(datasets)s,
        %(sql_sha256)s, %(rows)s, %(bytes)s, %(duration_ms)s, %(outcome)s, %(error_code)s,
        %(export_key)s)

-- name: insert_audit_started
-- The durable half of an overlapped audit (Settings.query_audit_durable): written while the
-- engine runs, before the answer; finish_audit records the outcome.
INSERT INTO data.query_audit (query_id, org_id, user_sub, task_id, attempt, datasets,
                              sql_sha256, duration_ms, outcome)
VALUES (%(query_id)s, %(org_id)s, %(user_sub)s, %(task_id)s, %(attempt)s, %(datasets)s,
        %(sql_sha256)s, 0, 'started')

-- name: finish_audit
-- The outcome of a query whose 'started' row is durable; one row or the caller raises. The
-- datasets too: a query run again (the registry moved under it) answers from others.
UPDATE data.query_audit
SET rows = %(rows)s, bytes = %(bytes)s, duration_ms = %(duration_ms)s, outcome = %(outcome)s,
    error_code = %(error_code)s, export_key = %(export_key)s, datasets = %(datasets)s
WHERE query_id = %(query_id)s AND outcome = 'started'

-- name: hot_followed_chains
-- Chains the org's chain_sync jobs (or the named job) follow into data.hot_* (a `hot:` block).
SELECT DISTINCT chain_id FROM state.chain_sync_jobs
WHERE org_id = %(org_id)s AND jsonb_typeof(spec -> 'hot') = 'object'
  AND (%(job)s::text IS NULL OR name = %(job)s)
ORDER BY chain_id
