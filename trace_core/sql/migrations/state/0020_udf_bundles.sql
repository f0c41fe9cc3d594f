-- UDF code bundles (trace_core/udf/bundles.py). The code itself is an object in the object
-- store under udf/bundles/<sha256>.py (content-addressed: the same code is stored once and
-- never changes); a task pins the sha256 it ran. udf_bundle_versions numbers the successive
-- bundles of one named UDF (a job's code file), so "which code ran when" can be read back.
CREATE TABLE state.udf_bundles (
    org_id      uuid        NOT NULL,
    sha256      text        NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    object_key  text        NOT NULL,
    size_bytes  bigint      NOT NULL CHECK (size_bytes >= 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, sha256)
);

CREATE TABLE state.udf_bundle_versions (
    org_id      uuid        NOT NULL,
    name        text        NOT NULL CHECK (name <> ''),
    version     integer     NOT NULL CHECK (version > 0),
    sha256      text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, name, version),
    FOREIGN KEY (org_id, sha256) REFERENCES state.udf_bundles (org_id, sha256)
);
