-- depends: 0033_rls 0060_epoch_materializations
-- Row-level security for a tenant table added on another branch (state.epoch_materializations,
-- issue 23): the same policy as every tenant table (0033_rls.sql). Grants are explicit, since a
-- database that had 0060 before 0033 got no default privileges for it.
ALTER TABLE state.epoch_materializations ENABLE ROW LEVEL SECURITY;
ALTER TABLE state.epoch_materializations FORCE ROW LEVEL SECURITY;
CREATE POLICY epoch_materializations_org ON state.epoch_materializations
    USING (org_id = state.current_org_id()) WITH CHECK (org_id = state.current_org_id());
GRANT SELECT, INSERT, UPDATE, DELETE ON state.epoch_materializations TO trace_tenant;
GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON state.epoch_materializations TO trace_system;
