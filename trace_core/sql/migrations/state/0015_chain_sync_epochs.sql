-- Epochs: a stream's Dagster partitions are coarse block windows of epoch_blocks blocks
-- ([k * epoch_blocks, (k + 1) * epoch_blocks), aligned to block 0), while the fine ranges stay
-- in chain_sync_scheduled_ranges. Existing jobs take the default; their fine-range Dagster
-- partitions are re-keyed onto epochs by the dispatcher's partition sync (docs/partitions.md).
ALTER TABLE state.chain_sync_jobs
    ADD COLUMN epoch_blocks bigint NOT NULL DEFAULT 100000 CHECK (epoch_blocks > 0);
