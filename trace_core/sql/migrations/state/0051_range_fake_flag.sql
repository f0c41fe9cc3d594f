-- Status at 100k ranges (issue 25): whether a completed range's version is fake is copied onto
-- the range when it completes (versions are immutable), so status counts completed ranges
-- without joining a version per range; the covering index serves that count, the blocks sum
-- and the recent-throughput window from the index alone.
ALTER TABLE state.chain_sync_scheduled_ranges ADD COLUMN fake boolean NOT NULL DEFAULT false;
UPDATE state.chain_sync_scheduled_ranges r SET fake = true
FROM state.dataset_versions v
WHERE v.dataset_version = r.dataset_version AND v.fake AND r.status = 'completed';
DROP INDEX state.chain_sync_ranges_completed_idx;
CREATE INDEX chain_sync_ranges_completed_idx
    ON state.chain_sync_scheduled_ranges (job_id, dataset_key, completed_at)
    INCLUDE (range_start, range_end, fake, created_at)
    WHERE status = 'completed';
