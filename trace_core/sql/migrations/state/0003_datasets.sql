-- Dataset registry: stable dataset ids and committed, immutable dataset versions.
CREATE TABLE state.datasets (
    dataset_uuid uuid PRIMARY KEY,
    org_id       uuid   NOT NULL,
    chain_id     bigint NOT NULL CHECK (chain_id > 0),
    dataset_key  text   NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, chain_id, dataset_key)
);

CREATE TABLE state.dataset_versions (
    dataset_version uuid PRIMARY KEY,
    dataset_uuid    uuid   NOT NULL REFERENCES state.datasets (dataset_uuid),
    chain_id        bigint NOT NULL,
    range_start     bigint NOT NULL CHECK (range_start >= 0),
    range_end       bigint NOT NULL,
    config_hash     text   NOT NULL,
    schema_hash     text   NOT NULL,
    storage_prefix  text   NOT NULL,  -- object-store key prefix, ends with '/'
    manifest_key    text   NOT NULL,
    row_count       bigint NOT NULL CHECK (row_count >= 0),
    bytes           bigint NOT NULL CHECK (bytes >= 0),
    file_count      integer NOT NULL CHECK (file_count >= 0),
    task_id         uuid,
    attempt         integer,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (range_end > range_start),
    UNIQUE (dataset_uuid, config_hash, range_start, range_end)
);
CREATE INDEX dataset_versions_range_idx ON state.dataset_versions (dataset_uuid, range_start, created_at DESC);
