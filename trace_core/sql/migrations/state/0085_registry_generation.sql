-- depends: 0034_rls_epoch_materializations 0050_version_compaction
-- The registry's generation per org (issue 25 item 6): the Query Service caches what a user
-- query resolves from the registry (versions, jobs, streams, followed chains) per org and
-- job, keyed by this counter, and reads only the counter per query. Every committed change
-- to an org's datasets, dataset versions, chain_sync jobs or streams bumps it, in the
-- changing transaction (so it is visible exactly when the change is): a deferred trigger,
-- fired at commit, once per org per transaction (the row lock is held only from there to
-- the commit). Owned by trace_system (BYPASSRLS): the bump must land whatever the
-- committing session's org setting is.
ALTER TABLE state.orgs ADD COLUMN registry_generation bigint NOT NULL DEFAULT 0;

CREATE FUNCTION state.bump_registry_generation() RETURNS trigger
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    orgs uuid[];
    org uuid;
    done text;
BEGIN
    IF TG_OP = 'INSERT' THEN
        orgs := ARRAY[NEW.org_id];
    ELSIF TG_OP = 'DELETE' THEN
        orgs := ARRAY[OLD.org_id];
    ELSE
        orgs := ARRAY[OLD.org_id, NEW.org_id];
    END IF;
    FOREACH org IN ARRAY orgs LOOP
        done := coalesce(current_setting('trace.registry_bumped', true), '');
        CONTINUE WHEN org IS NULL OR strpos(done, org::text) > 0;
        UPDATE state.orgs SET registry_generation = registry_generation + 1
        WHERE org_id = org;
        PERFORM set_config('trace.registry_bumped', done || org::text || ',', true);
    END LOOP;
    RETURN NULL;
END
$$;
ALTER FUNCTION state.bump_registry_generation() OWNER TO trace_system;

CREATE CONSTRAINT TRIGGER datasets_registry_generation
    AFTER INSERT OR UPDATE OR DELETE ON state.datasets
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    EXECUTE FUNCTION state.bump_registry_generation();
CREATE CONSTRAINT TRIGGER dataset_versions_registry_generation
    AFTER INSERT OR UPDATE OR DELETE ON state.dataset_versions
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    EXECUTE FUNCTION state.bump_registry_generation();
CREATE CONSTRAINT TRIGGER chain_sync_jobs_registry_generation
    AFTER INSERT OR UPDATE OR DELETE ON state.chain_sync_jobs
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    EXECUTE FUNCTION state.bump_registry_generation();
CREATE CONSTRAINT TRIGGER chain_sync_streams_registry_generation
    AFTER INSERT OR UPDATE OR DELETE ON state.chain_sync_streams
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    EXECUTE FUNCTION state.bump_registry_generation();
