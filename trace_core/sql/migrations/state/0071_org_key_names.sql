-- depends: 0030_tenancy
-- Two org names that differ only in '-' and '_' would give the same Dagster key prefix
-- (org_<name>, trace_core.engine.orgs.key_prefix: Dagster keys allow no '-'), and duplicate
-- asset keys stop the whole code location from loading. Such a second org is refused: its
-- insert conflicts here (tenancy.create_org says why). An existing pair (created before this
-- check) keeps working in state, and the index is left out with a warning, so the migration
-- never fails a running deployment.
DO $$
BEGIN
    CREATE UNIQUE INDEX orgs_key_name_idx ON state.orgs ((replace(name, '-', '_')));
EXCEPTION WHEN unique_violation THEN
    RAISE WARNING 'orgs whose names differ only in - and _ exist: rename one (Dagster keys clash)';
END $$;
