-- The HTTP API (trace_core.api): the deletes that no other module needs.

-- name: delete_alert
DELETE FROM state.alert_definitions WHERE org_id = %(org_id)s AND name = %(name)s
RETURNING alert_id

-- name: job_running_tasks
SELECT count(*) FROM state.tasks WHERE job_id = %(job_id)s AND status = 'running'

-- name: delete_paused_tasks
-- A deleted job's queued tasks (paused with it) go with it; finished ones stay as history.
DELETE FROM state.tasks WHERE job_id = %(job_id)s AND status = 'queued'

-- name: delete_chain_sync_job
DELETE FROM state.chain_sync_jobs WHERE org_id = %(org_id)s AND job_id = %(job_id)s
RETURNING job_id

-- name: delete_transform
DELETE FROM state.transform_definitions WHERE org_id = %(org_id)s AND name = %(name)s
RETURNING transform_id
