-- Query Service audit: one row per query that passed authentication and authorization,
-- whatever its outcome. Never the SQL text: only its sha256.
CREATE TABLE data.query_audit (
    query_id    uuid        PRIMARY KEY,
    org_id      uuid        NOT NULL,
    user_sub    text,
    task_id     uuid,
    attempt     integer,
    datasets    jsonb       NOT NULL DEFAULT '[]'::jsonb,  -- [{relation, dataset_uuid, dataset_version}]
    sql_sha256  text        NOT NULL,
    rows        bigint      CHECK (rows >= 0),
    bytes       bigint      CHECK (bytes >= 0),
    duration_ms integer     NOT NULL CHECK (duration_ms >= 0),
    outcome     text        NOT NULL CHECK (outcome IN ('ok', 'rejected', 'failed')),
    error_code  text,
    export_key  text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((user_sub IS NULL) <> (task_id IS NULL)),
    CHECK (task_id IS NULL OR attempt IS NOT NULL),
    CHECK ((outcome = 'ok') = (error_code IS NULL))
);
CREATE INDEX query_audit_org_idx ON data.query_audit (org_id, created_at DESC);
CREATE INDEX query_audit_user_idx ON data.query_audit (user_sub, created_at DESC)
    WHERE user_sub IS NOT NULL;
CREATE INDEX query_audit_task_idx ON data.query_audit (task_id, created_at DESC)
    WHERE task_id IS NOT NULL;
