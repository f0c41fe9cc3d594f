-- What each RPC pool serves per chain: one row per (org, chain, pool, capability), written by
-- the capability probe (trace_core/chain_sync/capabilities.py). served: true = answered, false =
-- the provider says the method/tracer does not exist, NULL = the probe could not tell.
CREATE TABLE state.rpc_pool_capabilities (
    org_id      uuid        NOT NULL,
    chain_id    bigint      NOT NULL CHECK (chain_id > 0),
    rpc_pool    text        NOT NULL,
    capability  text        NOT NULL,
    served      boolean,
    detail      text,
    probed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, chain_id, rpc_pool, capability)
);
