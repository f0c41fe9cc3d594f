-- depends: 0033_rls
-- The follower's cursors and the compacted hot ranges are keyed by org (issue 22): one
-- follower and one compaction per (org, chain), since each org's job has its own RPC and its
-- own hot rows. Existing cursors belong to the default org, like the hot rows data 0010
-- stamped. (A deployment that had set another TRACE_ORG_ID: its follower finds no cursor of
-- its org and adopts the hot rows it stamped since, or starts afresh at the job's start.)
ALTER TABLE state.hot_follower_cursors ADD COLUMN org_id uuid NOT NULL
    DEFAULT '00000000-0000-0000-0000-000000000001';
ALTER TABLE state.hot_follower_cursors ALTER COLUMN org_id DROP DEFAULT;
ALTER TABLE state.hot_follower_cursors DROP CONSTRAINT hot_follower_cursors_pkey,
    ADD PRIMARY KEY (org_id, chain_id);

-- A tenant table now: `status --org` reads its own org's cursors (read-only, as before).
ALTER TABLE state.hot_follower_cursors ENABLE ROW LEVEL SECURITY;
ALTER TABLE state.hot_follower_cursors FORCE ROW LEVEL SECURITY;
CREATE POLICY hot_follower_cursors_org ON state.hot_follower_cursors
    USING (org_id = state.current_org_id()) WITH CHECK (org_id = state.current_org_id());

-- Compacted ranges: unique per org (each org's dataset has its own versions).
DO $$
DECLARE name text;
BEGIN
    SELECT conname INTO name FROM pg_constraint
    WHERE conrelid = 'state.partition_versions'::regclass AND contype = 'u';
    EXECUTE format('ALTER TABLE state.partition_versions DROP CONSTRAINT %I', name);
END $$;
ALTER TABLE state.partition_versions ADD CONSTRAINT partition_versions_range_key
    UNIQUE (org_id, chain_id, dataset_key, range_start, range_end);
DROP INDEX state.partition_versions_pending_delete_idx;
CREATE INDEX partition_versions_pending_delete_idx
    ON state.partition_versions (org_id, chain_id, dataset_key, range_start)
    WHERE hot_deleted_at IS NULL;
