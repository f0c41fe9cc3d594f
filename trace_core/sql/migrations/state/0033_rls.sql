-- depends: 0032_org_columns
-- Row-level security (issue 22, docs/tenancy.md): every tenant table has RLS enabled and
-- FORCEd (its owner is filtered too) with one policy: a row is visible and writable only when
-- its org_id is the transaction's org (trace.org_id, set by tenant_scope with
-- set_config(..., true)). No org set: no rows. Roles that bypass: superusers and trace_system
-- (BYPASSRLS, owns nothing), for cross-org system work.

ALTER TABLE state.outbox ENABLE ROW LEVEL SECURITY;
ALTER TABLE state.outbox FORCE ROW LEVEL SECURITY;
CREATE POLICY outbox_org ON state.outbox
    USING (org_id = state.current_org_id()) WITH CHECK (org_id = state.current_org_id());

ALTER TABLE state.tasks ENABLE ROW LEVEL SECURITY;
ALTER TABLE state.tasks FORCE ROW LEVEL SECURITY;
CREATE POLICY tasks_org ON state.tasks
    USING (org_id = state.current_org_id()) WITH CHECK (org_id = state.current_org_id());

ALTER TABLE state.task_attempts ENABLE ROW LEVEL SECURITY;
ALTER TABLE state.task_attempts FORCE ROW LEVEL SECURITY;
CREATE POLICY task_attempts_org ON state.task_attempts
    USING (org_id = state.current_org_id()) WITH CHECK (org_id = state.current_org_id());

ALTER TABLE state.task_revivals ENABLE ROW LEVEL SECURITY;
ALTER TABLE state.task_revivals FORCE ROW LEVEL SECURITY;
CREATE POLICY task_revivals_org ON state.task_revivals
    USING (org_id = state.current_org_id()) WITH CHECK (org_id = state.current_org_id());

ALTER TABLE state.task_inputs ENABLE ROW LEVEL SECURITY;
ALTER TABLE state.task_inputs FORCE ROW LEVEL SECURITY;
CREATE POLICY task_inputs_org ON state.task_inputs
    USING (org_id = state.current_org_id()) WITH CHECK (org_id = state.current_org_id());

ALTER TABLE state.datasets ENABLE ROW LEVEL SECURITY;
ALTER TABLE state.datasets FORCE ROW LEVEL SECURITY;
CREATE POLICY datasets_org ON state.datasets
    USING (org_id = state.current_org_id()) WITH CHECK (org_id = state.current_org_id());

ALTER TABLE state.dataset_versions ENABLE ROW LEVEL SECURITY;
ALTER TABLE state.dataset_versions FORCE ROW LEVEL SECURITY;
CREATE POLICY dataset_versions_org ON state.dataset_versions
    USING (org_id = state.current_org_id()) WITH CHECK (org_id = state.current_org_id());

ALTER TABLE state.chain_sync_jobs ENABLE ROW LEVEL SECURITY;
ALTER TABLE state.chain_sync_jobs FORCE ROW LEVEL SECURITY;
CREATE POLICY chain_sync_jobs_org ON state.chain_sync_jobs
    USING (org_id = state.current_org_id()) WITH CHECK (org_id = state.current_org_id());

ALTER TABLE state.chain_sync_streams ENABLE ROW LEVEL SECURITY;
ALTER TABLE state.chain_sync_streams FORCE ROW LEVEL SECURITY;
CREATE POLICY chain_sync_streams_org ON state.chain_sync_streams
    USING (org_id = state.current_org_id()) WITH CHECK (org_id = state.current_org_id());

ALTER TABLE state.chain_sync_cursor ENABLE ROW LEVEL SECURITY;
ALTER TABLE state.chain_sync_cursor FORCE ROW LEVEL SECURITY;
CREATE POLICY chain_sync_cursor_org ON state.chain_sync_cursor
    USING (org_id = state.current_org_id()) WITH CHECK (org_id = state.current_org_id());

ALTER TABLE state.chain_sync_scheduled_ranges ENABLE ROW LEVEL SECURITY;
ALTER TABLE state.chain_sync_scheduled_ranges FORCE ROW LEVEL SECURITY;
CREATE POLICY chain_sync_scheduled_ranges_org ON state.chain_sync_scheduled_ranges
    USING (org_id = state.current_org_id()) WITH CHECK (org_id = state.current_org_id());

ALTER TABLE state.chain_head_observations ENABLE ROW LEVEL SECURITY;
ALTER TABLE state.chain_head_observations FORCE ROW LEVEL SECURITY;
CREATE POLICY chain_head_observations_org ON state.chain_head_observations
    USING (org_id = state.current_org_id()) WITH CHECK (org_id = state.current_org_id());

ALTER TABLE state.partition_versions ENABLE ROW LEVEL SECURITY;
ALTER TABLE state.partition_versions FORCE ROW LEVEL SECURITY;
CREATE POLICY partition_versions_org ON state.partition_versions
    USING (org_id = state.current_org_id()) WITH CHECK (org_id = state.current_org_id());

ALTER TABLE state.alert_definitions ENABLE ROW LEVEL SECURITY;
ALTER TABLE state.alert_definitions FORCE ROW LEVEL SECURITY;
CREATE POLICY alert_definitions_org ON state.alert_definitions
    USING (org_id = state.current_org_id()) WITH CHECK (org_id = state.current_org_id());

ALTER TABLE state.rpc_pool_capabilities ENABLE ROW LEVEL SECURITY;
ALTER TABLE state.rpc_pool_capabilities FORCE ROW LEVEL SECURITY;
CREATE POLICY rpc_pool_capabilities_org ON state.rpc_pool_capabilities
    USING (org_id = state.current_org_id()) WITH CHECK (org_id = state.current_org_id());

ALTER TABLE state.udf_bundles ENABLE ROW LEVEL SECURITY;
ALTER TABLE state.udf_bundles FORCE ROW LEVEL SECURITY;
CREATE POLICY udf_bundles_org ON state.udf_bundles
    USING (org_id = state.current_org_id()) WITH CHECK (org_id = state.current_org_id());

ALTER TABLE state.udf_bundle_versions ENABLE ROW LEVEL SECURITY;
ALTER TABLE state.udf_bundle_versions FORCE ROW LEVEL SECURITY;
CREATE POLICY udf_bundle_versions_org ON state.udf_bundle_versions
    USING (org_id = state.current_org_id()) WITH CHECK (org_id = state.current_org_id());

ALTER TABLE state.transform_definitions ENABLE ROW LEVEL SECURITY;
ALTER TABLE state.transform_definitions FORCE ROW LEVEL SECURITY;
CREATE POLICY transform_definitions_org ON state.transform_definitions
    USING (org_id = state.current_org_id()) WITH CHECK (org_id = state.current_org_id());

ALTER TABLE state.source_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE state.source_events FORCE ROW LEVEL SECURITY;
CREATE POLICY source_events_org ON state.source_events
    USING (org_id = state.current_org_id()) WITH CHECK (org_id = state.current_org_id());

ALTER TABLE state.org_role_memberships ENABLE ROW LEVEL SECURITY;
ALTER TABLE state.org_role_memberships FORCE ROW LEVEL SECURITY;
CREATE POLICY org_role_memberships_org ON state.org_role_memberships
    USING (org_id = state.current_org_id()) WITH CHECK (org_id = state.current_org_id());

ALTER TABLE state.api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE state.api_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY api_keys_org ON state.api_keys
    USING (org_id = state.current_org_id()) WITH CHECK (org_id = state.current_org_id());

ALTER TABLE state.audit_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE state.audit_events FORCE ROW LEVEL SECURITY;
CREATE POLICY audit_events_org ON state.audit_events
    USING (org_id = state.current_org_id()) WITH CHECK (org_id = state.current_org_id());

-- orgs: a tenant sees its own org row only, and never writes it (trace_system does).
ALTER TABLE state.orgs ENABLE ROW LEVEL SECURITY;
ALTER TABLE state.orgs FORCE ROW LEVEL SECURITY;
CREATE POLICY orgs_org ON state.orgs FOR SELECT USING (org_id = state.current_org_id());

-- users: a tenant sees the users that are members of its org (the membership subquery is
-- itself filtered to the org), and never writes them.
ALTER TABLE state.users ENABLE ROW LEVEL SECURITY;
ALTER TABLE state.users FORCE ROW LEVEL SECURITY;
CREATE POLICY users_org ON state.users FOR SELECT
    USING (EXISTS (SELECT 1 FROM state.org_role_memberships m WHERE m.user_id = users.user_id));

-- Privileges: tenant tables to trace_tenant (rows filtered above); the role catalogue read
-- only, the follower's per-chain cursors read only; the other global tables (queues, worker
-- runs, leases, slots) not at all. trace_system may read and write every table and owns none.
GRANT USAGE ON SCHEMA state TO trace_tenant, trace_system;
GRANT SELECT, INSERT, UPDATE, DELETE ON
    state.outbox,
    state.tasks,
    state.task_attempts,
    state.task_revivals,
    state.task_inputs,
    state.datasets,
    state.dataset_versions,
    state.chain_sync_jobs,
    state.chain_sync_streams,
    state.chain_sync_cursor,
    state.chain_sync_scheduled_ranges,
    state.chain_head_observations,
    state.partition_versions,
    state.alert_definitions,
    state.rpc_pool_capabilities,
    state.udf_bundles,
    state.udf_bundle_versions,
    state.transform_definitions,
    state.source_events,
    state.org_role_memberships,
    state.api_keys,
    state.audit_events
    TO trace_tenant;
GRANT SELECT ON state.orgs, state.users, state.org_roles TO trace_tenant;
-- the follower's position per chain (public chain data), shown by `status`
GRANT SELECT ON state.hot_follower_cursors TO trace_tenant;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA state TO trace_tenant;
GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA state TO trace_system;
GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA state TO trace_system;
-- Tables added later by the migrating user: trace_system gets them, trace_tenant too (a new
-- tenant table needs its policy; tests/integration/test_tenancy_rls.py fails until it has
-- one or is listed as global, and then asserts trace_tenant holds no privilege on it).
ALTER DEFAULT PRIVILEGES IN SCHEMA state
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO trace_tenant;
ALTER DEFAULT PRIVILEGES IN SCHEMA state
    GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON TABLES TO trace_system;
ALTER DEFAULT PRIVILEGES IN SCHEMA state GRANT USAGE, SELECT ON SEQUENCES TO trace_tenant;
ALTER DEFAULT PRIVILEGES IN SCHEMA state
    GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO trace_system;
