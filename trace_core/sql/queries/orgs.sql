-- The orgs the engine serves (state database, as trace_system: every org's rows).

-- name: orgs_with_work
-- Orgs with chain_sync jobs, transforms or alerts (enabled ones only unless told otherwise),
-- by name: the dispatcher's and the Dagster definitions' list of orgs to serve.
SELECT o.org_id, o.name
FROM state.orgs o
WHERE EXISTS (SELECT 1 FROM state.chain_sync_jobs j
              WHERE j.org_id = o.org_id AND (j.enabled OR NOT %(enabled_only)s))
   OR EXISTS (SELECT 1 FROM state.transform_definitions t
              WHERE t.org_id = o.org_id AND (t.enabled OR NOT %(enabled_only)s))
   OR EXISTS (SELECT 1 FROM state.alert_definitions a
              WHERE a.org_id = o.org_id AND (a.enabled OR NOT %(enabled_only)s))
ORDER BY o.name

-- name: act_for_org
-- The org this session's (is_local: this transaction's) new rows are stamped with (the system
-- role bypasses RLS: this only stamps). ``engine.orgs.acting_for`` restores the session's.
SELECT set_config('trace.org_id', %(org_id)s, %(is_local)s)

-- name: dataset_org
SELECT org_id FROM state.datasets WHERE dataset_uuid = %(dataset_uuid)s
