-- Extraction slots per RPC pool: at most TRACE_RPC_POOL_<POOL>_MAX_CONCURRENT cryo
-- extractions run against a pool at once, across every stream, run and machine. A slot is
-- held by one task attempt; it is free again when released, or as soon as that attempt no
-- longer holds a live lease (its worker died), so a crash never leaks a slot.
CREATE TABLE state.rpc_pool_slots (
    pool        text        NOT NULL,
    slot        integer     NOT NULL CHECK (slot >= 0),
    task_id     uuid,
    attempt     integer,
    acquired_at timestamptz,
    PRIMARY KEY (pool, slot)
);
