-- Transform jobs (applied from YAML, kind: transform). transform_id = uuid5 of (org_id, name);
-- a re-apply updates the row in place. The code is a content-addressed bundle in the object
-- store (bundle_sha256) for Python, or the gated SELECT itself (sql) for SQL transforms. spec
-- is the validated definition as JSON (never a secret: webhook secrets come from the
-- environment).
CREATE TABLE state.transform_definitions (
    transform_id   uuid PRIMARY KEY,
    org_id         uuid        NOT NULL,
    name           text        NOT NULL,
    job_name       text        NOT NULL,
    chain_id       bigint      NOT NULL,
    inputs         text[]      NOT NULL CHECK (cardinality(inputs) > 0),
    output_key     text        NOT NULL,
    code_kind      text        NOT NULL CHECK (code_kind IN ('python', 'sql')),
    bundle_sha256  text        CHECK (bundle_sha256 ~ '^[0-9a-f]{64}$'),
    on_input       boolean     NOT NULL,
    cron           text,
    webhook        boolean     NOT NULL DEFAULT false,
    manual         boolean     NOT NULL DEFAULT true,
    enabled        boolean     NOT NULL DEFAULT true,
    spec           jsonb       NOT NULL,
    yaml_hash      text        NOT NULL,
    source_file    text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, name),
    UNIQUE (org_id, chain_id, output_key),
    CHECK ((code_kind = 'python') = (bundle_sha256 IS NOT NULL))
);
-- Routing's lookup: enabled on-input transforms of a job reading a dataset key.
CREATE INDEX transform_definitions_job_idx ON state.transform_definitions (org_id, job_name)
    WHERE enabled AND on_input;
