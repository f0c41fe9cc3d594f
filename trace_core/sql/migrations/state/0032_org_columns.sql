-- depends: 0031_tenant_roles
-- Every tenant row carries its org. Existing rows belong to their parent's org, else to the
-- default org; org ids already used by existing rows (a TRACE_ORG_ID other than the default)
-- become orgs of their own, named 'org-<first 8 hex digits>', so nothing moves under a running
-- deployment.
--
-- New rows: a child row takes its parent's org (triggers below); any other row takes the
-- transaction's org (trace.org_id, set by tenant_scope or by the runtime's connections), else
-- the default org.

CREATE FUNCTION state.current_org_id() RETURNS uuid
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT NULLIF(current_setting('trace.org_id', true), '')::uuid $$;

CREATE FUNCTION state.org_or_default() RETURNS uuid
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT COALESCE(NULLIF(current_setting('trace.org_id', true), '')::uuid,
                      '00000000-0000-0000-0000-000000000001'::uuid) $$;

INSERT INTO state.orgs (org_id, name)
SELECT DISTINCT o.org_id, 'org-' || left(o.org_id::text, 8)
FROM (
    SELECT org_id FROM state.datasets
    UNION SELECT org_id FROM state.chain_sync_jobs
    UNION SELECT org_id FROM state.alert_definitions
    UNION SELECT org_id FROM state.transform_definitions
    UNION SELECT org_id FROM state.udf_bundles
    UNION SELECT org_id FROM state.source_events
) o
ON CONFLICT DO NOTHING;

-- Columns: added with the default org (no table rewrite), then re-stamped from the parent.
ALTER TABLE state.tasks ADD COLUMN org_id uuid NOT NULL
    DEFAULT '00000000-0000-0000-0000-000000000001';
ALTER TABLE state.task_attempts ADD COLUMN org_id uuid NOT NULL
    DEFAULT '00000000-0000-0000-0000-000000000001';
ALTER TABLE state.task_revivals ADD COLUMN org_id uuid NOT NULL
    DEFAULT '00000000-0000-0000-0000-000000000001';
ALTER TABLE state.dataset_versions ADD COLUMN org_id uuid NOT NULL
    DEFAULT '00000000-0000-0000-0000-000000000001';
ALTER TABLE state.partition_versions ADD COLUMN org_id uuid NOT NULL
    DEFAULT '00000000-0000-0000-0000-000000000001';
ALTER TABLE state.chain_sync_streams ADD COLUMN org_id uuid NOT NULL
    DEFAULT '00000000-0000-0000-0000-000000000001';
ALTER TABLE state.chain_sync_cursor ADD COLUMN org_id uuid NOT NULL
    DEFAULT '00000000-0000-0000-0000-000000000001';
ALTER TABLE state.chain_sync_scheduled_ranges ADD COLUMN org_id uuid NOT NULL
    DEFAULT '00000000-0000-0000-0000-000000000001';

UPDATE state.tasks t SET org_id = j.org_id
FROM state.chain_sync_jobs j WHERE j.job_id = t.job_id AND t.org_id <> j.org_id;
UPDATE state.tasks t SET org_id = a.org_id
FROM state.alert_definitions a WHERE a.alert_id = t.job_id AND t.org_id <> a.org_id;
UPDATE state.tasks t SET org_id = d.org_id
FROM state.transform_definitions d WHERE d.transform_id = t.job_id AND t.org_id <> d.org_id;
UPDATE state.task_attempts c SET org_id = t.org_id
FROM state.tasks t WHERE t.task_id = c.task_id AND c.org_id <> t.org_id;
UPDATE state.task_revivals c SET org_id = t.org_id
FROM state.tasks t WHERE t.task_id = c.task_id AND c.org_id <> t.org_id;
UPDATE state.dataset_versions c SET org_id = d.org_id
FROM state.datasets d WHERE d.dataset_uuid = c.dataset_uuid AND c.org_id <> d.org_id;
UPDATE state.partition_versions c SET org_id = d.org_id
FROM state.datasets d WHERE d.dataset_uuid = c.dataset_uuid AND c.org_id <> d.org_id;
UPDATE state.chain_sync_streams c SET org_id = j.org_id
FROM state.chain_sync_jobs j WHERE j.job_id = c.job_id AND c.org_id <> j.org_id;
UPDATE state.chain_sync_cursor c SET org_id = j.org_id
FROM state.chain_sync_jobs j WHERE j.job_id = c.job_id AND c.org_id <> j.org_id;
UPDATE state.chain_sync_scheduled_ranges c SET org_id = j.org_id
FROM state.chain_sync_jobs j WHERE j.job_id = c.job_id AND c.org_id <> j.org_id;

-- From here on the org comes from the parent (triggers) or the transaction.
ALTER TABLE state.tasks ALTER COLUMN org_id DROP DEFAULT;
ALTER TABLE state.task_attempts ALTER COLUMN org_id DROP DEFAULT;
ALTER TABLE state.task_revivals ALTER COLUMN org_id DROP DEFAULT;
ALTER TABLE state.dataset_versions ALTER COLUMN org_id DROP DEFAULT;
ALTER TABLE state.partition_versions ALTER COLUMN org_id DROP DEFAULT;
ALTER TABLE state.chain_sync_streams ALTER COLUMN org_id DROP DEFAULT;
ALTER TABLE state.chain_sync_cursor ALTER COLUMN org_id DROP DEFAULT;
ALTER TABLE state.chain_sync_scheduled_ranges ALTER COLUMN org_id DROP DEFAULT;

-- A task's org: given, else its job's (chain_sync, alert or transform), else the
-- transaction's, else the default org.
CREATE FUNCTION state.stamp_task_org() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.org_id IS NULL AND NEW.job_id IS NOT NULL THEN
        NEW.org_id := COALESCE(
            (SELECT org_id FROM state.chain_sync_jobs WHERE job_id = NEW.job_id),
            (SELECT org_id FROM state.alert_definitions WHERE alert_id = NEW.job_id),
            (SELECT org_id FROM state.transform_definitions WHERE transform_id = NEW.job_id));
    END IF;
    NEW.org_id := COALESCE(NEW.org_id, state.org_or_default());
    RETURN NEW;
END $$;
CREATE TRIGGER tasks_org BEFORE INSERT ON state.tasks
    FOR EACH ROW EXECUTE FUNCTION state.stamp_task_org();

CREATE FUNCTION state.stamp_org_from_task() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.org_id IS NULL THEN
        NEW.org_id := COALESCE(
            (SELECT org_id FROM state.tasks WHERE task_id = NEW.task_id), state.org_or_default());
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER task_attempts_org BEFORE INSERT ON state.task_attempts
    FOR EACH ROW EXECUTE FUNCTION state.stamp_org_from_task();
CREATE TRIGGER task_revivals_org BEFORE INSERT ON state.task_revivals
    FOR EACH ROW EXECUTE FUNCTION state.stamp_org_from_task();
CREATE TRIGGER task_inputs_org BEFORE INSERT ON state.task_inputs
    FOR EACH ROW EXECUTE FUNCTION state.stamp_org_from_task();

CREATE FUNCTION state.stamp_org_from_dataset() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.org_id IS NULL THEN
        NEW.org_id := COALESCE(
            (SELECT org_id FROM state.datasets WHERE dataset_uuid = NEW.dataset_uuid),
            state.org_or_default());
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER dataset_versions_org BEFORE INSERT ON state.dataset_versions
    FOR EACH ROW EXECUTE FUNCTION state.stamp_org_from_dataset();
CREATE TRIGGER partition_versions_org BEFORE INSERT ON state.partition_versions
    FOR EACH ROW EXECUTE FUNCTION state.stamp_org_from_dataset();

CREATE FUNCTION state.stamp_org_from_job() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.org_id IS NULL THEN
        NEW.org_id := COALESCE(
            (SELECT org_id FROM state.chain_sync_jobs WHERE job_id = NEW.job_id),
            state.org_or_default());
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER chain_sync_streams_org BEFORE INSERT ON state.chain_sync_streams
    FOR EACH ROW EXECUTE FUNCTION state.stamp_org_from_job();
CREATE TRIGGER chain_sync_cursor_org BEFORE INSERT ON state.chain_sync_cursor
    FOR EACH ROW EXECUTE FUNCTION state.stamp_org_from_job();
CREATE TRIGGER chain_sync_scheduled_ranges_org BEFORE INSERT ON state.chain_sync_scheduled_ranges
    FOR EACH ROW EXECUTE FUNCTION state.stamp_org_from_job();

-- The outbox: a tenant command (trigger, retry) writes its wake-up with its intent; the
-- publisher (the system) reads every org's.
ALTER TABLE state.outbox ADD COLUMN org_id uuid NOT NULL
    DEFAULT '00000000-0000-0000-0000-000000000001';
ALTER TABLE state.outbox ALTER COLUMN org_id SET DEFAULT state.org_or_default();

CREATE INDEX tasks_org_idx ON state.tasks (org_id, status);
CREATE INDEX dataset_versions_org_idx ON state.dataset_versions (org_id);
