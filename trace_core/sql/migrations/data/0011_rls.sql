-- depends: 0010_org_columns
-- Row-level security (issue 22, docs/tenancy.md): every tenant table has RLS enabled and
-- FORCEd (its owner is filtered too) with one policy: a row is visible and writable only when
-- its org_id is the transaction's org (trace.org_id, set by tenant_scope with
-- set_config(..., true)). No org set: no rows. Roles that bypass: superusers and trace_system
-- (BYPASSRLS, owns nothing), for cross-org system work.
-- The roles are cluster-wide; created here too for a data database on its own server.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'trace_tenant') THEN
        BEGIN
            CREATE ROLE trace_tenant NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
        END;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'trace_system') THEN
        BEGIN
            CREATE ROLE trace_system NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE BYPASSRLS;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
        END;
    END IF;
END $$;
GRANT trace_tenant TO CURRENT_USER;
GRANT trace_system TO CURRENT_USER;

ALTER TABLE data.query_audit ENABLE ROW LEVEL SECURITY;
ALTER TABLE data.query_audit FORCE ROW LEVEL SECURITY;
CREATE POLICY query_audit_org ON data.query_audit
    USING (org_id = data.current_org_id()) WITH CHECK (org_id = data.current_org_id());

ALTER TABLE data.hot_blocks ENABLE ROW LEVEL SECURITY;
ALTER TABLE data.hot_blocks FORCE ROW LEVEL SECURITY;
CREATE POLICY hot_blocks_org ON data.hot_blocks
    USING (org_id = data.current_org_id()) WITH CHECK (org_id = data.current_org_id());

ALTER TABLE data.hot_transactions ENABLE ROW LEVEL SECURITY;
ALTER TABLE data.hot_transactions FORCE ROW LEVEL SECURITY;
CREATE POLICY hot_transactions_org ON data.hot_transactions
    USING (org_id = data.current_org_id()) WITH CHECK (org_id = data.current_org_id());

ALTER TABLE data.hot_logs ENABLE ROW LEVEL SECURITY;
ALTER TABLE data.hot_logs FORCE ROW LEVEL SECURITY;
CREATE POLICY hot_logs_org ON data.hot_logs
    USING (org_id = data.current_org_id()) WITH CHECK (org_id = data.current_org_id());

ALTER TABLE data.data_invalidations ENABLE ROW LEVEL SECURITY;
ALTER TABLE data.data_invalidations FORCE ROW LEVEL SECURITY;
CREATE POLICY data_invalidations_org ON data.data_invalidations
    USING (org_id = data.current_org_id()) WITH CHECK (org_id = data.current_org_id());

ALTER TABLE data.alert_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE data.alert_events FORCE ROW LEVEL SECURITY;
CREATE POLICY alert_events_org ON data.alert_events
    USING (org_id = data.current_org_id()) WITH CHECK (org_id = data.current_org_id());

ALTER TABLE data.alert_deliveries ENABLE ROW LEVEL SECURITY;
ALTER TABLE data.alert_deliveries FORCE ROW LEVEL SECURITY;
CREATE POLICY alert_deliveries_org ON data.alert_deliveries
    USING (org_id = data.current_org_id()) WITH CHECK (org_id = data.current_org_id());

ALTER TABLE data.alert_delivery_attempts ENABLE ROW LEVEL SECURITY;
ALTER TABLE data.alert_delivery_attempts FORCE ROW LEVEL SECURITY;
CREATE POLICY alert_delivery_attempts_org ON data.alert_delivery_attempts
    USING (org_id = data.current_org_id()) WITH CHECK (org_id = data.current_org_id());

GRANT USAGE ON SCHEMA data TO trace_tenant, trace_system;
GRANT SELECT, INSERT, UPDATE, DELETE ON
    data.query_audit,
    data.hot_blocks,
    data.hot_transactions,
    data.hot_logs,
    data.data_invalidations,
    data.alert_events,
    data.alert_deliveries,
    data.alert_delivery_attempts
    TO trace_tenant;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA data TO trace_tenant;
GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA data TO trace_system;
GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA data TO trace_system;
ALTER DEFAULT PRIVILEGES IN SCHEMA data
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO trace_tenant;
ALTER DEFAULT PRIVILEGES IN SCHEMA data
    GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON TABLES TO trace_system;
ALTER DEFAULT PRIVILEGES IN SCHEMA data GRANT USAGE, SELECT ON SEQUENCES TO trace_tenant;
ALTER DEFAULT PRIVILEGES IN SCHEMA data
    GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO trace_system;
