-- Incremental integrity: when each dataset version was last verified and how it fared, so a
-- scheduled pass verifies new and changed versions (never verified) plus a bounded sample of
-- the stalest others, instead of every committed range every time.
ALTER TABLE state.dataset_versions
    ADD COLUMN verified_at timestamptz,
    ADD COLUMN verified_passed boolean;
CREATE INDEX dataset_versions_verified_idx ON state.dataset_versions (dataset_uuid, verified_at)
    WHERE collected_at IS NULL;
