-- Compaction of finalized versions (issue 25): a dataset's versions inside an aligned window are
-- rewritten as one version. Its inputs are marked `compacted_into` it in the registering
-- transaction, so readers skip them at once (they serve no block from then on) while retention
-- collects them after the grace period like any superseded version.
ALTER TABLE state.dataset_versions ADD COLUMN compacted_into uuid;
-- Precedence is `created_at` (newest wins a block). Stamped at the insert, under the dataset's
-- advisory lock (`lock_dataset_shared`), not at the transaction's start: a version registered
-- after a compaction committed is always newer than it.
ALTER TABLE state.dataset_versions ALTER COLUMN created_at SET DEFAULT clock_timestamp();
-- What readers resolve: live, uncompacted versions of a dataset, by range.
CREATE INDEX dataset_versions_serving_idx ON state.dataset_versions (dataset_uuid, range_start)
    WHERE collected_at IS NULL AND compacted_into IS NULL;
