-- Alerts: definitions (state), routing and scheduling (state), deliveries (data).

-- name: upsert_definition
INSERT INTO state.alert_definitions AS d
    (alert_id, org_id, name, job_name, reads, on_commit, schedule_seconds, severity, enabled,
     spec, yaml_hash, source_file, next_scheduled_at)
VALUES (%(alert_id)s, %(org_id)s, %(name)s, %(job_name)s, %(reads)s, %(on_commit)s,
        %(schedule_seconds)s, %(severity)s, %(enabled)s, %(spec)s, %(yaml_hash)s,
        %(source_file)s, CASE WHEN %(schedule_seconds)s::integer IS NULL THEN NULL ELSE now() END)
ON CONFLICT (alert_id) DO UPDATE SET
    job_name = EXCLUDED.job_name,
    reads = EXCLUDED.reads,
    on_commit = EXCLUDED.on_commit,
    schedule_seconds = EXCLUDED.schedule_seconds,
    severity = EXCLUDED.severity,
    enabled = EXCLUDED.enabled,
    spec = EXCLUDED.spec,
    yaml_hash = EXCLUDED.yaml_hash,
    source_file = EXCLUDED.source_file,
    next_scheduled_at = CASE
        WHEN EXCLUDED.schedule_seconds IS NULL THEN NULL
        WHEN d.schedule_seconds IS DISTINCT FROM EXCLUDED.schedule_seconds THEN now()
        ELSE d.next_scheduled_at END,
    updated_at = now()
WHERE d.spec IS DISTINCT FROM EXCLUDED.spec OR d.source_file IS DISTINCT FROM EXCLUDED.source_file
RETURNING (xmax = 0) AS created

-- name: definition_exists
SELECT 1 FROM state.alert_definitions WHERE alert_id = %(alert_id)s

-- name: list_definitions
SELECT alert_id, org_id, name, job_name, reads, on_commit, schedule_seconds, severity, enabled,
       spec, yaml_hash, source_file, next_scheduled_at, created_at, updated_at
FROM state.alert_definitions
WHERE org_id = %(org_id)s
  AND (%(name)s::text IS NULL OR name = %(name)s)
  AND (%(alert_id)s::uuid IS NULL OR alert_id = %(alert_id)s)
ORDER BY name

-- name: job_analytics
-- The `analytics:` block of a chain_sync job (NULL without one): what it produces.
SELECT spec -> 'analytics' AS analytics FROM state.chain_sync_jobs WHERE job_id = %(job_id)s

-- name: analytics_jobs_on_chain
-- Jobs of the org on a chain that carry an `analytics:` block (routing of analytics versions).
SELECT name, spec -> 'analytics' AS analytics
FROM state.chain_sync_jobs
WHERE org_id = %(org_id)s AND chain_id = %(chain_id)s
  AND jsonb_typeof(spec -> 'analytics') = 'object'
ORDER BY name

-- name: on_commit_alerts
SELECT alert_id, name, reads, spec
FROM state.alert_definitions
WHERE org_id = %(org_id)s AND job_name = %(job_name)s AND enabled AND on_commit
  AND %(dataset_key)s = ANY (reads)
ORDER BY name

-- name: claim_due_schedules
SELECT alert_id, name, job_name, reads, spec, schedule_seconds,
       floor(extract(epoch FROM now()) / schedule_seconds)::bigint AS slot
FROM state.alert_definitions
WHERE org_id = %(org_id)s AND enabled AND schedule_seconds IS NOT NULL
  AND next_scheduled_at <= now()
ORDER BY next_scheduled_at
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED

-- name: advance_schedule
UPDATE state.alert_definitions
SET next_scheduled_at = now() + make_interval(secs => schedule_seconds)
WHERE alert_id = %(alert_id)s

-- name: events_to_plan
SELECT e.dedupe_key, e.alert_name
FROM data.alert_events e
WHERE e.alert_name = ANY (%(names)s::text[]) AND e.org_id = %(org_id)s
  AND e.created_at >= now() - make_interval(secs => %(max_age_seconds)s)
  AND e.stale_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM data.alert_deliveries d WHERE d.dedupe_key = e.dedupe_key)
ORDER BY e.created_at, e.dedupe_key
LIMIT %(limit)s

-- name: insert_delivery
INSERT INTO data.alert_deliveries
    (delivery_id, dedupe_key, alert_name, channel_key, channel_kind, max_attempts)
VALUES (%(delivery_id)s, %(dedupe_key)s, %(alert_name)s, %(channel_key)s, %(channel_kind)s,
        %(max_attempts)s)
ON CONFLICT (dedupe_key, channel_key) DO NOTHING

-- name: lock_due_deliveries
SELECT delivery_id, dedupe_key, alert_name, channel_key, channel_kind, status, attempts,
       max_attempts, last_attempt_at
FROM data.alert_deliveries
WHERE org_id = %(org_id)s
  AND ((status = 'pending' AND next_attempt_at <= now())
       OR (status = 'sending' AND leased_until <= now()))
ORDER BY next_attempt_at, created_at
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED

-- name: recent_attempts_per_channel
SELECT channel_key, count(*)
FROM data.alert_delivery_attempts
WHERE channel_key = ANY (%(channel_keys)s::text[])
  AND started_at > now() - interval '60 seconds'
GROUP BY channel_key

-- name: lease_delivery
UPDATE data.alert_deliveries
SET status = 'sending', attempts = attempts + 1, last_attempt_at = now(),
    leased_until = now() + make_interval(secs => %(lease_seconds)s), updated_at = now()
WHERE delivery_id = %(delivery_id)s
RETURNING attempts, last_attempt_at

-- name: finish_delivery
UPDATE data.alert_deliveries
SET status = %(status)s,
    next_attempt_at = CASE WHEN %(status)s = 'pending'
                           THEN now() + make_interval(secs => %(delay_seconds)s)
                           ELSE next_attempt_at END,
    leased_until = NULL,
    last_status_code = %(status_code)s,
    last_error = %(error)s,
    delivered_at = CASE WHEN %(status)s = 'delivered' THEN now() ELSE delivered_at END,
    updated_at = now()
WHERE delivery_id = %(delivery_id)s AND status = 'sending' AND attempts = %(attempt)s

-- name: insert_attempt
INSERT INTO data.alert_delivery_attempts
    (delivery_id, attempt, channel_key, started_at, outcome, status_code, error, duration_ms)
VALUES (%(delivery_id)s, %(attempt)s, %(channel_key)s, %(started_at)s, %(outcome)s,
        %(status_code)s, %(error)s, %(duration_ms)s)
ON CONFLICT (delivery_id, attempt) DO NOTHING

-- name: events_by_key
SELECT dedupe_key, alert_name, severity, chain_id, block_number, block_hash, tx_hash,
       event_time, payload
FROM data.alert_events
WHERE dedupe_key = ANY (%(keys)s::text[])

-- name: delivery_backlog
SELECT count(*) FROM data.alert_deliveries
WHERE (status = 'pending' AND next_attempt_at <= now())
   OR status = 'sending'

-- name: list_deliveries
SELECT d.delivery_id, d.dedupe_key, d.alert_name, d.channel_key, d.channel_kind, d.status,
       d.attempts, d.max_attempts, d.next_attempt_at, d.last_status_code, d.last_error,
       d.delivered_at, d.created_at
FROM data.alert_deliveries d
WHERE (%(alert_name)s::text IS NULL OR d.alert_name = %(alert_name)s)
ORDER BY d.created_at DESC, d.delivery_id
LIMIT %(limit)s

-- name: events_with_delivery
-- Every alert event with its deliveries ("log delivered, webhook failed"), oldest block first.
SELECT e.dedupe_key, e.alert_name, e.severity, e.block_number, e.tx_hash,
       coalesce(string_agg(d.channel_kind || ' ' || d.status, ', ' ORDER BY d.channel_key),
                'planned') AS delivery
FROM data.alert_events e LEFT JOIN data.alert_deliveries d USING (dedupe_key)
GROUP BY e.dedupe_key, e.alert_name, e.severity, e.block_number, e.tx_hash
ORDER BY e.block_number, e.dedupe_key

-- name: finished_tasks
SELECT count(*) FROM state.tasks
WHERE task_id = ANY(%(task_ids)s) AND status IN ('succeeded', 'dead')

-- name: pending_outbox_on
SELECT count(*) FROM state.outbox WHERE status = 'pending' AND topic = %(topic)s

-- name: dead_deliveries
-- Dead letters: failed deliveries not dismissed, oldest failure first (`trace-lite dlq`).
SELECT delivery_id, dedupe_key, alert_name, channel_key, channel_kind, attempts, max_attempts,
       last_status_code, last_error, updated_at AS failed_at
FROM data.alert_deliveries
WHERE status = 'failed' AND dismissed_at IS NULL
  AND (%(ids)s::uuid[] IS NULL OR delivery_id = ANY (%(ids)s::uuid[]))
ORDER BY updated_at, delivery_id
LIMIT %(limit)s

-- name: replay_dead_deliveries
-- Back to pending, due now, with a fresh budget of attempts (attempt numbers keep counting).
UPDATE data.alert_deliveries
SET status = 'pending', max_attempts = attempts + %(more_attempts)s, next_attempt_at = now(),
    updated_at = now()
WHERE status = 'failed' AND dismissed_at IS NULL
  AND (%(ids)s::uuid[] IS NULL OR delivery_id = ANY (%(ids)s::uuid[]))

-- name: dismiss_dead_deliveries
UPDATE data.alert_deliveries SET dismissed_at = now(), updated_at = now()
WHERE status = 'failed' AND dismissed_at IS NULL
  AND (%(ids)s::uuid[] IS NULL OR delivery_id = ANY (%(ids)s::uuid[]))

-- name: delivery_attempts
SELECT a.attempt, a.started_at, a.finished_at, a.outcome, a.status_code, a.error, a.duration_ms,
       d.alert_name, d.dedupe_key, d.channel_kind, d.status
FROM data.alert_deliveries d
JOIN data.alert_delivery_attempts a USING (delivery_id)
WHERE d.delivery_id = %(delivery_id)s
ORDER BY a.attempt
