-- name: insert_task
INSERT INTO state.tasks (task_id, operator, payload, max_attempts, job_id, paused)
VALUES (%(task_id)s, %(operator)s, %(payload)s, %(max_attempts)s, %(job_id)s, %(paused)s)
ON CONFLICT (task_id) DO NOTHING
RETURNING task_id

-- name: task_payload
SELECT operator, payload FROM state.tasks WHERE task_id = %(task_id)s

-- name: lock_task
SELECT task_id, operator, status, attempt, max_attempts, paused, lease_token,
       lease_expires_at, lease_expires_at <= now() AS lease_expired,
       next_run_at <= now() AS due, payload
FROM state.tasks WHERE task_id = %(task_id)s FOR UPDATE

-- name: grant_lease
UPDATE state.tasks
SET status = 'running', attempt = attempt + 1, lease_token = %(lease_token)s,
    lease_expires_at = now() + make_interval(secs => %(lease_seconds)s),
    started_at = COALESCE(started_at, now()), updated_at = now()
WHERE task_id = %(task_id)s
RETURNING attempt, lease_expires_at

-- name: insert_attempt
INSERT INTO state.task_attempts (task_id, attempt) VALUES (%(task_id)s, %(attempt)s)
ON CONFLICT DO NOTHING

-- name: heartbeat
UPDATE state.tasks
SET lease_expires_at = now() + make_interval(secs => %(lease_seconds)s), updated_at = now()
WHERE task_id = %(task_id)s AND attempt = %(attempt)s AND lease_token = %(lease_token)s
  AND status = 'running'
RETURNING lease_expires_at

-- name: finish_succeeded
UPDATE state.tasks
SET status = 'succeeded', lease_token = NULL, lease_expires_at = NULL, outputs = %(outputs)s,
    last_error = NULL, last_error_kind = NULL, finished_at = now(), updated_at = now()
WHERE task_id = %(task_id)s AND attempt = %(attempt)s AND lease_token = %(lease_token)s
  AND status = 'running'

-- name: finish_dead
UPDATE state.tasks
SET status = 'dead', lease_token = NULL, lease_expires_at = NULL, last_error = %(error)s,
    last_error_kind = %(kind)s, finished_at = now(), updated_at = now()
WHERE task_id = %(task_id)s AND attempt = %(attempt)s

-- name: requeue
UPDATE state.tasks
SET status = 'queued', lease_token = NULL, lease_expires_at = NULL, last_error = %(error)s,
    last_error_kind = %(kind)s, next_run_at = now() + make_interval(secs => %(delay)s),
    updated_at = now()
WHERE task_id = %(task_id)s AND attempt = %(attempt)s
RETURNING next_run_at

-- name: record_attempt_outcome
UPDATE state.task_attempts SET finished_at = now(), outcome = %(outcome)s, error = %(error)s
WHERE task_id = %(task_id)s AND attempt = %(attempt)s

-- name: expired_leases
SELECT task_id, attempt, max_attempts FROM state.tasks
WHERE status = 'running' AND lease_expires_at <= now()
ORDER BY lease_expires_at
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED

-- name: unclaimed_queued
SELECT task_id, attempt, wakeups FROM state.tasks
WHERE status = 'queued' AND NOT paused
  AND next_run_at <= now() - make_interval(secs => %(after_seconds)s)
  AND updated_at <= now() - make_interval(secs => %(after_seconds)s)
ORDER BY next_run_at
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED

-- name: bump_wakeups
UPDATE state.tasks SET wakeups = wakeups + 1, updated_at = now()
WHERE task_id = %(task_id)s RETURNING wakeups

-- name: set_paused_for_job
UPDATE state.tasks SET paused = %(paused)s, updated_at = now()
WHERE job_id = %(job_id)s AND status IN ('queued', 'running') AND paused <> %(paused)s
RETURNING task_id, status
