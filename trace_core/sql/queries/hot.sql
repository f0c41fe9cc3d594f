-- Hot path queries (data DB: data.hot_*, data.data_invalidations; state DB: follower cursors,
-- partition_versions). Ranges are end-exclusive [range_start, range_end).
-- Every query names its org: the follower and compactor connect as trace_system, which
-- bypasses row-level security, so the org filter here is the only thing keeping one org's
-- hot rows (same chain, same blocks) apart from another's.

-- name: delete_other_blocks
-- Rows at the given heights that belong to another block (a reorg's leftovers).
DELETE FROM data.hot_blocks h
USING unnest(%(numbers)s::bigint[], %(hashes)s::bytea[]) AS b(block_number, block_hash)
WHERE h.org_id = %(org_id)s AND h.chain_id = %(chain_id)s AND h.block_number = b.block_number AND h.block_hash <> b.block_hash

-- name: delete_other_transactions
-- Rows at the given heights that belong to another block (a reorg's leftovers).
DELETE FROM data.hot_transactions h
USING unnest(%(numbers)s::bigint[], %(hashes)s::bytea[]) AS b(block_number, block_hash)
WHERE h.org_id = %(org_id)s AND h.chain_id = %(chain_id)s AND h.block_number = b.block_number AND h.block_hash <> b.block_hash

-- name: delete_other_logs
-- Rows at the given heights that belong to another block (a reorg's leftovers).
DELETE FROM data.hot_logs h
USING unnest(%(numbers)s::bigint[], %(hashes)s::bytea[]) AS b(block_number, block_hash)
WHERE h.org_id = %(org_id)s AND h.chain_id = %(chain_id)s AND h.block_number = b.block_number AND h.block_hash <> b.block_hash

-- name: hot_tip
SELECT block_number, block_hash FROM data.hot_blocks
WHERE org_id = %(org_id)s AND chain_id = %(chain_id)s ORDER BY block_number DESC LIMIT 1

-- name: hot_low
SELECT min(block_number) FROM data.hot_blocks
WHERE org_id = %(org_id)s AND chain_id = %(chain_id)s

-- name: stored_hashes
SELECT block_number, block_hash FROM data.hot_blocks
WHERE org_id = %(org_id)s AND chain_id = %(chain_id)s
  AND block_number >= %(range_start)s AND block_number < %(range_end)s

-- name: delete_blocks_above
DELETE FROM data.hot_blocks
WHERE org_id = %(org_id)s AND chain_id = %(chain_id)s AND block_number > %(block_number)s

-- name: delete_transactions_above
DELETE FROM data.hot_transactions
WHERE org_id = %(org_id)s AND chain_id = %(chain_id)s AND block_number > %(block_number)s

-- name: delete_logs_above
DELETE FROM data.hot_logs
WHERE org_id = %(org_id)s AND chain_id = %(chain_id)s AND block_number > %(block_number)s

-- name: insert_invalidation
INSERT INTO data.data_invalidations (org_id, chain_id, range_start, range_end, reason, details)
VALUES (%(org_id)s, %(chain_id)s, %(range_start)s, %(range_end)s, %(reason)s, %(details)s)
RETURNING invalidation_id

-- name: get_cursor
SELECT first_block, block_number, block_hash FROM state.hot_follower_cursors
WHERE org_id = %(org_id)s AND chain_id = %(chain_id)s

-- name: upsert_cursor
INSERT INTO state.hot_follower_cursors (org_id, chain_id, first_block, block_number, block_hash)
VALUES (%(org_id)s, %(chain_id)s, %(first_block)s, %(block_number)s, %(block_hash)s)
ON CONFLICT (org_id, chain_id) DO UPDATE
SET first_block = LEAST(state.hot_follower_cursors.first_block, EXCLUDED.first_block),
    block_number = EXCLUDED.block_number,
    block_hash = EXCLUDED.block_hash,
    updated_at = now()

-- name: chain_sync_finality_depth
SELECT max(finality_depth) FROM state.chain_sync_jobs
WHERE org_id = %(org_id)s AND chain_id = %(chain_id)s AND enabled AND finality_depth IS NOT NULL

-- name: insert_partition_version
INSERT INTO state.partition_versions
    (org_id, dataset_uuid, dataset_version, partition_key, chain_id, dataset_key, range_start,
     range_end, row_count)
VALUES (%(org_id)s, %(dataset_uuid)s, %(dataset_version)s, %(partition_key)s, %(chain_id)s,
        %(dataset_key)s, %(range_start)s, %(range_end)s, %(row_count)s)
ON CONFLICT DO NOTHING

-- name: pending_hot_deletes
SELECT dataset_version, range_start, range_end FROM state.partition_versions
WHERE org_id = %(org_id)s AND chain_id = %(chain_id)s AND dataset_key = %(dataset_key)s AND hot_deleted_at IS NULL
ORDER BY range_start

-- name: mark_hot_deleted
UPDATE state.partition_versions SET hot_deleted_at = now()
WHERE org_id = %(org_id)s AND chain_id = %(chain_id)s AND dataset_key = %(dataset_key)s
  AND range_start = %(range_start)s AND range_end = %(range_end)s AND hot_deleted_at IS NULL

-- name: compacted_ranges
SELECT range_start, range_end, dataset_version, row_count, hot_deleted_at
FROM state.partition_versions
WHERE org_id = %(org_id)s AND chain_id = %(chain_id)s AND dataset_key = %(dataset_key)s
ORDER BY range_start

-- name: try_advisory_lock
SELECT pg_try_advisory_lock(%(key)s)

-- name: release_advisory_lock
SELECT pg_advisory_unlock(%(key)s)

-- name: compacted_end
SELECT max(range_end) FROM state.partition_versions
WHERE org_id = %(org_id)s AND chain_id = %(chain_id)s
