-- chain_sync: YAML jobs, their streams, per-stream cursors, planned ranges, observed heads.
-- All block ranges are end-exclusive [range_start, range_end).

CREATE TABLE state.chain_sync_jobs (
    job_id                     uuid PRIMARY KEY,
    org_id                     uuid        NOT NULL,
    name                       text        NOT NULL,
    chain_id                   bigint      NOT NULL CHECK (chain_id > 0),
    enabled                    boolean     NOT NULL DEFAULT true,
    mode                       text        NOT NULL CHECK (mode IN ('fixed_target', 'follow_head')),
    from_block                 bigint      NOT NULL CHECK (from_block >= 0),
    to_block                   bigint,
    tail_lag                   bigint      CHECK (tail_lag >= 0),
    head_poll_interval_seconds integer     CHECK (head_poll_interval_seconds > 0),
    max_head_age_seconds       integer     CHECK (max_head_age_seconds > 0),
    finality_depth             bigint      CHECK (finality_depth >= 0),
    max_attempts               integer     CHECK (max_attempts > 0),
    yaml_hash                  text        NOT NULL,  -- change detector only
    spec                       jsonb       NOT NULL,
    source_file                text,
    last_error_kind            text,
    last_error_message         text,
    last_error_at              timestamptz,
    created_at                 timestamptz NOT NULL DEFAULT now(),
    updated_at                 timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, name),
    CHECK (mode <> 'fixed_target' OR (to_block IS NOT NULL AND to_block > from_block)),
    CHECK (mode <> 'follow_head' OR (tail_lag IS NOT NULL
                                     AND head_poll_interval_seconds IS NOT NULL
                                     AND max_head_age_seconds IS NOT NULL))
);
CREATE INDEX chain_sync_jobs_enabled_idx ON state.chain_sync_jobs (org_id, enabled, updated_at);

-- A stream dropped from the YAML stays (inactive) with its cursor and history; re-adding it
-- continues where it stopped.
CREATE TABLE state.chain_sync_streams (
    job_id            uuid    NOT NULL REFERENCES state.chain_sync_jobs (job_id) ON DELETE CASCADE,
    dataset_key       text    NOT NULL,
    cryo_dataset_name text    NOT NULL,
    rpc_pool          text    NOT NULL,
    chunk_size        bigint  NOT NULL CHECK (chunk_size > 0),
    max_inflight      integer NOT NULL CHECK (max_inflight > 0),
    config_hash       text    NOT NULL,
    dataset_uuid      uuid    NOT NULL,
    cryo_options      jsonb   NOT NULL DEFAULT '{}'::jsonb,
    active            boolean NOT NULL DEFAULT true,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, dataset_key)
);

-- next_block = the exclusive high-water mark of planned ranges; it never moves backwards.
CREATE TABLE state.chain_sync_cursor (
    job_id      uuid   NOT NULL,
    dataset_key text   NOT NULL,
    next_block  bigint NOT NULL CHECK (next_block >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, dataset_key),
    FOREIGN KEY (job_id, dataset_key)
        REFERENCES state.chain_sync_streams (job_id, dataset_key) ON DELETE CASCADE
);

-- scheduled -> completed (its task committed a dataset version) | dead (its task ended dead).
-- A dead range stops its stream from planning more until it is revived.
CREATE TABLE state.chain_sync_scheduled_ranges (
    job_id          uuid   NOT NULL,
    dataset_key     text   NOT NULL,
    range_start     bigint NOT NULL CHECK (range_start >= 0),
    range_end       bigint NOT NULL,
    task_id         uuid   NOT NULL UNIQUE,
    status          text   NOT NULL DEFAULT 'scheduled'
                    CHECK (status IN ('scheduled', 'completed', 'dead')),
    dataset_version uuid,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    completed_at    timestamptz,
    PRIMARY KEY (job_id, dataset_key, range_start, range_end),
    FOREIGN KEY (job_id, dataset_key)
        REFERENCES state.chain_sync_streams (job_id, dataset_key) ON DELETE CASCADE,
    CHECK (range_end > range_start),
    CHECK (status <> 'completed' OR completed_at IS NOT NULL)
);
CREATE INDEX chain_sync_ranges_status_idx
    ON state.chain_sync_scheduled_ranges (job_id, dataset_key, status, range_start);
CREATE INDEX chain_sync_ranges_completed_idx
    ON state.chain_sync_scheduled_ranges (job_id, dataset_key, completed_at)
    WHERE status = 'completed';

-- The newest head seen per (org, chain, pool). checked_at is the last poll attempt (success or
-- not); head_block/observed_at stay NULL until a poll succeeds; last_error_* say why a poll failed.
CREATE TABLE state.chain_head_observations (
    org_id             uuid   NOT NULL,
    chain_id           bigint NOT NULL CHECK (chain_id > 0),
    rpc_pool           text   NOT NULL,
    head_block         bigint CHECK (head_block >= 0),
    observed_at        timestamptz,
    source             text,
    checked_at         timestamptz NOT NULL DEFAULT now(),
    last_error_kind    text,
    last_error_message text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, chain_id, rpc_pool),
    CHECK ((head_block IS NULL) = (observed_at IS NULL))
);
