-- Hot path: the newest blocks of each followed chain, written by block_follower, read by the
-- Query Service next to cold Parquet versions, compacted to cold by parquet_compact.
--
-- Columns mirror cryo 0.3.2's default Parquet columns for blocks / transactions / logs
-- (cryo uint32 -> bigint, uint64 -> numeric(20,0) so no u64 value overflows, binary -> bytea).
-- The extra columns (parent_hash, block_hash on child tables, ingested_at) are bookkeeping for
-- reorg handling and are never written to Parquet.
-- Keys are natural keys: a re-delivered block changes nothing.

CREATE TABLE data.hot_blocks (
    chain_id         bigint         NOT NULL CHECK (chain_id > 0),
    block_number     bigint         NOT NULL CHECK (block_number >= 0),
    block_hash       bytea          NOT NULL,
    parent_hash      bytea          NOT NULL,
    author           bytea,
    gas_used         numeric(20, 0),
    extra_data       bytea,
    "timestamp"      bigint,
    base_fee_per_gas numeric(20, 0),
    ingested_at      timestamptz    NOT NULL DEFAULT now(),
    PRIMARY KEY (chain_id, block_number)
);

CREATE TABLE data.hot_transactions (
    chain_id                 bigint           NOT NULL CHECK (chain_id > 0),
    block_number             bigint           NOT NULL CHECK (block_number >= 0),
    transaction_index        bigint           NOT NULL CHECK (transaction_index >= 0),
    block_hash               bytea            NOT NULL,
    transaction_hash         bytea            NOT NULL,
    nonce                    numeric(20, 0),
    from_address             bytea,
    to_address               bytea,
    value_binary             bytea,
    value_string             text,
    value_f64                double precision,
    input                    bytea,
    gas_limit                numeric(20, 0),
    gas_used                 numeric(20, 0),
    gas_price                numeric(20, 0),
    transaction_type         bigint,
    max_priority_fee_per_gas numeric(20, 0),
    max_fee_per_gas          numeric(20, 0),
    success                  boolean,
    n_input_bytes            bigint,
    n_input_zero_bytes       bigint,
    n_input_nonzero_bytes    bigint,
    ingested_at              timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (chain_id, block_number, transaction_index)
);

CREATE TABLE data.hot_logs (
    chain_id          bigint      NOT NULL CHECK (chain_id > 0),
    block_number      bigint      NOT NULL CHECK (block_number >= 0),
    log_index         bigint      NOT NULL CHECK (log_index >= 0),
    block_hash        bytea       NOT NULL,
    transaction_index bigint,
    transaction_hash  bytea,
    address           bytea,
    topic0            bytea,
    topic1            bytea,
    topic2            bytea,
    topic3            bytea,
    data              bytea,
    ingested_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (chain_id, block_number, log_index)
);

-- Ranges whose previously served rows are no longer valid (a reorg replaced them).
-- End-exclusive [range_start, range_end).
CREATE TABLE data.data_invalidations (
    invalidation_id bigserial   PRIMARY KEY,
    chain_id        bigint      NOT NULL CHECK (chain_id > 0),
    range_start     bigint      NOT NULL CHECK (range_start >= 0),
    range_end       bigint      NOT NULL,
    reason          text        NOT NULL
                    CHECK (reason IN ('reorg', 'correction', 'manual', 'schema_change')),
    detected_at     timestamptz NOT NULL DEFAULT now(),
    details         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    CHECK (range_end > range_start)
);
CREATE INDEX data_invalidations_chain_idx ON data.data_invalidations (chain_id, detected_at);
