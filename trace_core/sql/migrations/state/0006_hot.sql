-- Hot path bookkeeping: the block follower's cursor per chain and the hot ranges compacted
-- into cold dataset versions. Block ranges are end-exclusive [range_start, range_end).

-- The last block whose rows are committed in data.hot_* and announced on the outbox.
-- block_hash is NULL only after a reorg below the follower's first block (hash unknown).
CREATE TABLE state.hot_follower_cursors (
    chain_id     bigint      PRIMARY KEY CHECK (chain_id > 0),
    first_block  bigint      NOT NULL CHECK (first_block >= 0),
    block_number bigint      NOT NULL CHECK (block_number >= first_block - 1),
    block_hash   bytea,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- One row per compacted hot range and dataset: the committed cold version that replaced it,
-- and when (if) its hot rows were deleted. partition_key is '{range_start}-{range_end}'.
CREATE TABLE state.partition_versions (
    dataset_uuid    uuid        NOT NULL,
    dataset_version uuid        NOT NULL,
    partition_key   text        NOT NULL,
    chain_id        bigint      NOT NULL CHECK (chain_id > 0),
    dataset_key     text        NOT NULL,
    range_start     bigint      NOT NULL CHECK (range_start >= 0),
    range_end       bigint      NOT NULL,
    row_count       bigint      NOT NULL CHECK (row_count >= 0),
    source          text        NOT NULL DEFAULT 'hot_compact',
    hot_deleted_at  timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dataset_uuid, dataset_version, partition_key),
    UNIQUE (chain_id, dataset_key, range_start, range_end),
    CHECK (range_end > range_start)
);
CREATE INDEX partition_versions_pending_delete_idx
    ON state.partition_versions (chain_id, dataset_key, range_start) WHERE hot_deleted_at IS NULL;
