-- Alert definitions (applied from YAML). alert_id = uuid5 of (org_id, name); a re-apply of
-- the same name updates the row in place. spec is the validated definition as JSON; its
-- channels may hold webhook URLs with tokens (never log or print them unredacted).
CREATE TABLE state.alert_definitions (
    alert_id          uuid PRIMARY KEY,
    org_id            uuid        NOT NULL,
    name              text        NOT NULL,
    job_name          text        NOT NULL,
    reads             text[]      NOT NULL CHECK (cardinality(reads) > 0),
    on_commit         boolean     NOT NULL,
    schedule_seconds  integer     CHECK (schedule_seconds > 0),
    severity          text        NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    enabled           boolean     NOT NULL DEFAULT true,
    spec              jsonb       NOT NULL,
    yaml_hash         text        NOT NULL,  -- change detector only
    source_file       text,
    -- schedule trigger: the next evaluation is due at this time (NULL: no schedule)
    next_scheduled_at timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, name),
    CHECK (on_commit OR schedule_seconds IS NOT NULL)
);
-- The router's lookup: enabled on-commit alerts of a job.
CREATE INDEX alert_definitions_job_idx ON state.alert_definitions (org_id, job_name)
    WHERE enabled AND on_commit;
CREATE INDEX alert_definitions_schedule_idx ON state.alert_definitions (next_scheduled_at)
    WHERE enabled AND schedule_seconds IS NOT NULL;
