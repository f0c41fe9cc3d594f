-- Transform jobs: definitions, routing lookups; source events (cron, webhook, manual).

-- name: upsert_definition
INSERT INTO state.transform_definitions AS d
    (transform_id, org_id, name, job_name, chain_id, inputs, output_key, code_kind,
     bundle_sha256, on_input, cron, webhook, manual, enabled, spec, yaml_hash, source_file)
VALUES (%(transform_id)s, %(org_id)s, %(name)s, %(job_name)s, %(chain_id)s, %(inputs)s,
        %(output_key)s, %(code_kind)s, %(bundle_sha256)s, %(on_input)s, %(cron)s, %(webhook)s,
        %(manual)s, %(enabled)s, %(spec)s, %(yaml_hash)s, %(source_file)s)
ON CONFLICT (transform_id) DO UPDATE SET
    job_name = EXCLUDED.job_name,
    chain_id = EXCLUDED.chain_id,
    inputs = EXCLUDED.inputs,
    output_key = EXCLUDED.output_key,
    code_kind = EXCLUDED.code_kind,
    bundle_sha256 = EXCLUDED.bundle_sha256,
    on_input = EXCLUDED.on_input,
    cron = EXCLUDED.cron,
    webhook = EXCLUDED.webhook,
    manual = EXCLUDED.manual,
    enabled = EXCLUDED.enabled,
    spec = EXCLUDED.spec,
    yaml_hash = EXCLUDED.yaml_hash,
    source_file = EXCLUDED.source_file,
    updated_at = now()
WHERE d.spec IS DISTINCT FROM EXCLUDED.spec
   OR d.bundle_sha256 IS DISTINCT FROM EXCLUDED.bundle_sha256
   OR d.source_file IS DISTINCT FROM EXCLUDED.source_file
RETURNING (xmax = 0) AS created

-- name: list_definitions
SELECT transform_id, org_id, name, job_name, chain_id, inputs, output_key, code_kind,
       bundle_sha256, on_input, cron, webhook, manual, enabled, spec, source_file,
       created_at, updated_at
FROM state.transform_definitions
WHERE org_id = %(org_id)s AND (%(name)s::text IS NULL OR name = %(name)s)
ORDER BY name

-- name: outputs_of_job
-- Output keys of a job's transforms other than the named one (what else an input may be).
SELECT name, output_key FROM state.transform_definitions
WHERE org_id = %(org_id)s AND job_name = %(job_name)s AND name <> %(name)s
ORDER BY name

-- name: output_owner
SELECT name FROM state.transform_definitions
WHERE org_id = %(org_id)s AND chain_id = %(chain_id)s AND output_key = %(output_key)s
  AND name <> %(name)s

-- name: routed_transforms
-- Enabled on-input transforms of a job that read a dataset key.
SELECT transform_id, name, job_name, chain_id, inputs, output_key, code_kind, bundle_sha256,
       on_input, cron, webhook, manual, enabled, spec
FROM state.transform_definitions
WHERE org_id = %(org_id)s AND job_name = %(job_name)s AND enabled AND on_input
  AND %(dataset_key)s = ANY (inputs)
ORDER BY name

-- name: insert_source_event
INSERT INTO state.source_events
    (source_event_id, org_id, job_name, kind, idempotency_key, body_sha256, body, task_id)
VALUES (%(source_event_id)s, %(org_id)s, %(job_name)s, %(kind)s, %(idempotency_key)s,
        %(body_sha256)s, %(body)s, %(task_id)s)
ON CONFLICT (org_id, job_name, kind, idempotency_key) DO NOTHING
RETURNING source_event_id

-- name: get_source_event
SELECT source_event_id, body_sha256, task_id, received_at
FROM state.source_events
WHERE org_id = %(org_id)s AND job_name = %(job_name)s AND kind = %(kind)s
  AND idempotency_key = %(idempotency_key)s

-- name: count_source_events
SELECT kind, count(*) FROM state.source_events
WHERE org_id = %(org_id)s AND job_name = %(job_name)s
GROUP BY kind ORDER BY kind

-- name: run_counts
-- Runs of the org's transforms by state, the last finish and the last dead run's error.
SELECT d.name,
       count(t.task_id) FILTER (WHERE t.status = 'queued') AS queued,
       count(t.task_id) FILTER (WHERE t.status = 'running') AS running,
       count(t.task_id) FILTER (WHERE t.status = 'succeeded') AS succeeded,
       count(t.task_id) FILTER (WHERE t.status = 'dead') AS dead,
       max(t.finished_at) AS last_finished_at,
       (array_agg(t.last_error ORDER BY t.updated_at DESC)
            FILTER (WHERE t.status = 'dead'))[1] AS last_error
FROM state.transform_definitions d
LEFT JOIN state.tasks t
       ON t.operator = %(operator)s AND t.payload ->> 'transform_id' = d.transform_id::text
WHERE d.org_id = %(org_id)s
GROUP BY d.name
