-- name: insert_task
INSERT INTO state.tasks (task_id, operator, payload, max_attempts, job_id, paused)
VALUES (%(task_id)s, %(operator)s, %(payload)s, %(max_attempts)s, %(job_id)s, %(paused)s)
ON CONFLICT (task_id) DO NOTHING
RETURNING task_id

-- name: insert_tasks
-- insert_task for many rows in one statement (create_tasks); returns the new ones.
INSERT INTO state.tasks (task_id, operator, payload, max_attempts, job_id, paused)
SELECT * FROM unnest(%(task_ids)s::uuid[], %(operators)s::text[], %(payloads)s::jsonb[],
                     %(max_attempts)s::integer[], %(job_ids)s::uuid[], %(paused)s::boolean[])
ON CONFLICT (task_id) DO NOTHING
RETURNING task_id, paused

-- name: task_payload
SELECT operator, payload FROM state.tasks WHERE task_id = %(task_id)s

-- name: lock_task
SELECT task_id, operator, status, attempt, attempt_base, max_attempts, paused, lease_token,
       lease_expires_at, lease_expires_at <= now() AS lease_expired,
       next_run_at <= now() AS due, payload, org_id
FROM state.tasks WHERE task_id = %(task_id)s FOR UPDATE

-- name: claim_queued
-- The common claim in one statement: a queued, due, unpaused task with attempts left gets a new
-- attempt and its lease (the UPDATE locks the row; a concurrent claimer re-checks the WHERE on
-- the winner's row version and gets no row). No row: claim() decides on the locked row.
WITH granted AS (
    UPDATE state.tasks
    SET status = 'running', attempt = attempt + 1, lease_token = %(lease_token)s,
        lease_expires_at = now() + make_interval(secs => %(lease_seconds)s),
        started_at = COALESCE(started_at, now()), updated_at = now()
    WHERE task_id = %(task_id)s AND status = 'queued' AND NOT paused AND next_run_at <= now()
      AND attempt - attempt_base < max_attempts
    RETURNING task_id, attempt, lease_expires_at, operator, payload, max_attempts, attempt_base,
              org_id
), recorded AS (
    -- the task's org given, so the org trigger skips its lookup of the task
    INSERT INTO state.task_attempts (task_id, attempt, org_id)
    SELECT task_id, attempt, org_id FROM granted
    ON CONFLICT DO NOTHING
)
SELECT attempt, lease_expires_at, operator, payload, max_attempts, attempt_base, org_id
FROM granted

-- name: complete_success
-- Fence and finish in one statement: only the current attempt's running lease matches (the
-- UPDATE locks the row and re-checks the WHERE after a concurrent change). No row: the caller
-- runs the full fence to name why.
-- A completion commits asynchronously (synchronous_commit off for the rest of this transaction,
-- its commit included; the setting it replaces is kept in trace.completion_sync) unless the
-- transaction wrote an outbox row (trace.wakes, set by outbox.insert_outbox, which also undoes
-- this): a transaction that wakes anything stays durable. Why a lost one is safe: lifecycle.py.
WITH done AS (
    UPDATE state.tasks
    SET status = 'succeeded', lease_token = NULL, lease_expires_at = NULL, outputs = %(outputs)s,
        last_error = NULL, last_error_kind = NULL, finished_at = now(), updated_at = now()
    WHERE task_id = %(task_id)s AND attempt = %(attempt)s AND lease_token = %(lease_token)s
      AND status = 'running'
    RETURNING task_id, attempt
), recorded AS (
    UPDATE state.task_attempts a SET finished_at = now(), outcome = 'succeeded', error = NULL
    FROM done WHERE a.task_id = done.task_id AND a.attempt = done.attempt
)
SELECT count(*),
       CASE WHEN count(*) = 1 AND current_setting('trace.wakes', true) IS DISTINCT FROM 'on'
       THEN set_config('trace.completion_sync',
                       COALESCE(NULLIF(current_setting('trace.completion_sync', true), ''),
                                current_setting('synchronous_commit')), true)
            || set_config('synchronous_commit', 'off', true) END
FROM done

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
SELECT task_id, attempt, attempt_base, max_attempts FROM state.tasks
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

-- name: record_worker_run
INSERT INTO state.worker_runs (run_key, task_ids) VALUES (%(run_key)s, %(task_ids)s)
ON CONFLICT (run_key) DO NOTHING

-- name: open_worker_runs
-- Unsettled runs requested at least grace_seconds ago, with the tasks still waiting on them:
-- queued, not paused, and unchanged since the request (nobody claimed or re-woke them).
SELECT r.run_key,
       COALESCE(array_agg(t.task_id ORDER BY t.task_id)
                FILTER (WHERE t.task_id IS NOT NULL), '{}') AS waiting
FROM state.worker_runs r
LEFT JOIN state.tasks t
  ON t.task_id = ANY (r.task_ids) AND t.status = 'queued' AND NOT t.paused
     AND t.updated_at <= r.requested_at
WHERE r.settled_at IS NULL
  AND r.requested_at <= now() - make_interval(secs => %(grace_seconds)s)
GROUP BY r.run_key, r.requested_at
ORDER BY r.requested_at
LIMIT %(limit)s

-- name: settle_worker_run
UPDATE state.worker_runs SET settled_at = now(), rewoken = %(rewoken)s
WHERE run_key = %(run_key)s AND settled_at IS NULL

-- name: lock_waiting_task
-- wake_at: when a task waiting out a retry backoff is due (its re-wake arrives then), else NULL
SELECT task_id, CASE WHEN next_run_at > now() THEN next_run_at END AS wake_at FROM state.tasks
WHERE task_id = %(task_id)s AND status = 'queued' AND NOT paused
  AND updated_at <= (SELECT requested_at FROM state.worker_runs WHERE run_key = %(run_key)s)
FOR UPDATE SKIP LOCKED

-- name: prune_settled_worker_runs
DELETE FROM state.worker_runs WHERE settled_at < now() - interval '1 day'

-- ---------------------------------------------------------------- revive (tasks/revive.py)

-- name: lock_for_revive
SELECT task_id, operator, status, attempt, attempt_base, max_attempts, paused, job_id,
       last_error_kind, last_error, payload, revives
FROM state.tasks WHERE task_id = ANY(%(task_ids)s::uuid[])
ORDER BY task_id
FOR UPDATE

-- A revived task is queued and due now with a fresh budget (attempt_base = attempt); it is
-- paused when its chain_sync job is paused, so it runs only after `resume`.
-- name: revive_task
UPDATE state.tasks t
SET status = 'queued', attempt_base = t.attempt, revives = t.revives + 1, revived_at = now(),
    next_run_at = now(), wakeups = t.wakeups + 1, lease_token = NULL, lease_expires_at = NULL,
    finished_at = NULL, updated_at = now(),
    paused = COALESCE((SELECT NOT j.enabled FROM state.chain_sync_jobs j WHERE j.job_id = t.job_id),
                      t.paused)
WHERE t.task_id = %(task_id)s AND t.status = 'dead'
RETURNING t.wakeups, t.paused, t.revives,
          now() + make_interval(secs => %(wake_delay_seconds)s) AS wake_at

-- name: insert_revival
INSERT INTO state.task_revivals (task_id, revive, attempt, last_error, source, detail)
VALUES (%(task_id)s, %(revive)s, %(attempt)s, %(last_error)s, %(source)s, %(detail)s)

-- A queued task waiting out a retry backoff becomes due now (a run that is about to claim it).
-- name: expedite_queued
UPDATE state.tasks SET next_run_at = now(), updated_at = now()
WHERE task_id = ANY(%(task_ids)s::uuid[]) AND status = 'queued' AND NOT paused
  AND next_run_at > now()
RETURNING task_id

-- name: outstanding_counts
-- Tasks still owed (queued or running, not paused), dead tasks, and pending outbox rows
-- (the hot follower's per-step announcements on dataset_events are not owed work).
SELECT (SELECT count(*) FROM state.tasks
        WHERE status IN ('queued', 'running') AND NOT paused) AS active,
       (SELECT count(*) FROM state.tasks WHERE status = 'dead') AS dead,
       (SELECT count(*) FROM state.outbox WHERE status = 'pending'
        AND NOT (topic = 'dataset_events' AND payload->>'event' LIKE 'hot\_%')) AS pending

-- name: task_infos
SELECT task_id, operator, status, attempt, payload, org_id FROM state.tasks
WHERE task_id = ANY(%(task_ids)s)

-- name: task_states
SELECT task_id, status FROM state.tasks WHERE task_id = ANY(%(task_ids)s)
