-- Retention: a superseded dataset version (every block served by newer versions) is garbage-
-- collected after a grace period. Its row stays as a tombstone: collected_at when it left the
-- registry's readers, purged_at once its objects were deleted (a crash in between is finished
-- by the next run). Repairs still count it (their generation), and readers skip it.
ALTER TABLE state.dataset_versions
    ADD COLUMN collected_at timestamptz,
    ADD COLUMN purged_at timestamptz,
    ADD CONSTRAINT dataset_versions_purged_after_collected
        CHECK (purged_at IS NULL OR collected_at IS NOT NULL);
CREATE INDEX dataset_versions_unpurged_idx ON state.dataset_versions (collected_at)
    WHERE collected_at IS NOT NULL AND purged_at IS NULL;
