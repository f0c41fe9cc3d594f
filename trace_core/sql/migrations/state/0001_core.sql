-- Core orchestration state: tasks (durable intent, leases, attempts) and the outbox.
CREATE SCHEMA IF NOT EXISTS state;

CREATE TABLE state.tasks (
    task_id          uuid PRIMARY KEY,
    operator         text        NOT NULL,
    status           text        NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'running', 'succeeded', 'dead')),
    attempt          integer     NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts     integer     NOT NULL DEFAULT 3 CHECK (max_attempts > 0),
    paused           boolean     NOT NULL DEFAULT false,
    lease_token      uuid,
    lease_expires_at timestamptz,
    next_run_at      timestamptz NOT NULL DEFAULT now(),
    wakeups          integer     NOT NULL DEFAULT 1,
    payload          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    job_id           uuid,
    last_error_kind  text,
    last_error       text,
    outputs          jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    CHECK (status <> 'running' OR (lease_token IS NOT NULL AND lease_expires_at IS NOT NULL))
);
CREATE INDEX tasks_running_lease_idx ON state.tasks (lease_expires_at) WHERE status = 'running';
CREATE INDEX tasks_queued_idx ON state.tasks (next_run_at) WHERE status = 'queued';
CREATE INDEX tasks_job_idx ON state.tasks (job_id, status);

-- Every attempt's outcome, for status, debugging and the UI.
CREATE TABLE state.task_attempts (
    task_id     uuid        NOT NULL REFERENCES state.tasks (task_id) ON DELETE CASCADE,
    attempt     integer     NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    outcome     text CHECK (outcome IN ('succeeded', 'retryable', 'fatal', 'expired')),
    error       text,
    PRIMARY KEY (task_id, attempt)
);

CREATE TABLE state.outbox (
    outbox_id    uuid PRIMARY KEY,
    topic        text        NOT NULL,
    payload      jsonb       NOT NULL,
    available_at timestamptz NOT NULL DEFAULT now(),
    status       text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent')),
    attempts     integer     NOT NULL DEFAULT 0,
    last_error   text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    sent_at      timestamptz
);
CREATE INDEX outbox_pending_idx ON state.outbox (available_at, created_at) WHERE status = 'pending';
