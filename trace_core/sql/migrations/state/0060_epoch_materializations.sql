-- Who reports an epoch's materialization: one row per (stream epoch, set of range versions).
-- Every path that reports a complete epoch (the run that committed its last range, the
-- dispatcher's partition sync, a materialization launched from the UI) first inserts its row;
-- only the inserter reports, so two finishers racing on the same epoch record it once. A claim
-- whose report never reached Dagster (the process died in between) is taken over by the
-- partition sync after a grace period (trace_core/chain_sync/epochs.py, claim_materialization).
CREATE TABLE state.epoch_materializations (
    org_id      uuid        NOT NULL,
    job_id      uuid        NOT NULL REFERENCES state.chain_sync_jobs (job_id) ON DELETE CASCADE,
    dataset_key text        NOT NULL,
    epoch_start bigint      NOT NULL,
    epoch_end   bigint      NOT NULL,
    versions    text        NOT NULL, -- sha256 of the sorted {range key: dataset version}
    claimed_by  text        NOT NULL,
    claimed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, dataset_key, epoch_start, epoch_end, versions)
);
