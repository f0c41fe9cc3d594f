-- Source events: one row per accepted trigger of a job (cron tick, webhook delivery, manual
-- launch), written in the same transaction as the task it creates and that task's outbox row.
-- (org_id, job_name, kind, idempotency_key) is unique: a repeated delivery or a double click
-- finds its row and creates nothing. body_sha256 tells a replay of the same request from a
-- different request reusing the key (refused).
CREATE TABLE state.source_events (
    source_event_id  uuid PRIMARY KEY,
    org_id           uuid        NOT NULL,
    job_name         text        NOT NULL,
    kind             text        NOT NULL CHECK (kind IN ('cron', 'webhook', 'manual')),
    idempotency_key  text        NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 200),
    body_sha256      text        NOT NULL,
    body             jsonb,
    task_id          uuid        NOT NULL,
    received_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, job_name, kind, idempotency_key)
);
CREATE INDEX source_events_job_idx ON state.source_events (org_id, job_name, received_at);
