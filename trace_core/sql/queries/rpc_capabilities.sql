-- Capability probe of RPC pools (trace_core/chain_sync/capabilities.py).

-- (chain, pool) pairs of the org's enabled jobs' active streams never probed or probed
-- before the TTL.
-- name: due_capability_pools
SELECT DISTINCT j.chain_id, s.rpc_pool
FROM state.chain_sync_jobs j
JOIN state.chain_sync_streams s ON s.job_id = j.job_id AND s.active
WHERE j.org_id = %(org_id)s AND j.enabled
  AND NOT EXISTS (
      SELECT 1 FROM state.rpc_pool_capabilities c
      WHERE c.org_id = j.org_id AND c.chain_id = j.chain_id AND c.rpc_pool = s.rpc_pool
        AND c.probed_at > now() - make_interval(secs => %(ttl_seconds)s)
  )
ORDER BY j.chain_id, s.rpc_pool

-- name: upsert_capability
INSERT INTO state.rpc_pool_capabilities (org_id, chain_id, rpc_pool, capability, served, detail)
VALUES (%(org_id)s, %(chain_id)s, %(rpc_pool)s, %(capability)s, %(served)s, %(detail)s)
ON CONFLICT (org_id, chain_id, rpc_pool, capability) DO UPDATE
SET served = EXCLUDED.served, detail = EXCLUDED.detail, probed_at = now()

-- name: missing_capabilities
SELECT chain_id, rpc_pool, capability, detail, probed_at
FROM state.rpc_pool_capabilities
WHERE org_id = %(org_id)s AND served IS FALSE
ORDER BY chain_id, rpc_pool, capability

-- name: missing_for_pool
SELECT capability, detail
FROM state.rpc_pool_capabilities
WHERE org_id = %(org_id)s AND chain_id = %(chain_id)s AND rpc_pool = %(rpc_pool)s
  AND served IS FALSE
