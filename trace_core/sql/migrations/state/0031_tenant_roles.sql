-- depends: 0030_tenancy
-- The two Postgres roles Trace's connections switch to (docs/tenancy.md). Both own nothing and
-- cannot log in; a connection takes one with SET [LOCAL] ROLE.
--   trace_tenant  NOBYPASSRLS: tenant-facing paths (Query Service, API, CLI --org/--api-key),
--                 with the org set per transaction (set_config('trace.org_id', ..., true)).
--   trace_system  BYPASSRLS: cross-org system work (dispatcher, queue claims, retention, the
--                 hot follower) and API-key authentication (before the org is known).
-- Roles are cluster-wide: creating them is idempotent and tolerates a racing creator.
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

-- The migrating user may switch to both (a superuser always can; a CREATEROLE user needs it).
GRANT trace_tenant TO CURRENT_USER;
GRANT trace_system TO CURRENT_USER;

-- Security-relevant events: refused authentication, refused or failed tenant commands, key
-- and membership changes. org_id is NULL only for a refusal before the org is known (an
-- unknown key); such rows are visible to the system role alone.
CREATE TABLE state.audit_events (
    event_id   bigserial   PRIMARY KEY,
    org_id     uuid,
    actor      text        NOT NULL,   -- 'cli', 'key:<key_id>', 'user:<user_id>', 'http'
    action     text        NOT NULL,   -- e.g. 'key.create', 'auth', 'query'
    outcome    text        NOT NULL CHECK (outcome IN ('ok', 'refused', 'failed')),
    detail     text,                   -- never a secret
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_events_org_idx ON state.audit_events (org_id, created_at DESC);

-- API-key authentication runs before the org is known, so it reads api_keys across orgs: as
-- trace_system (SECURITY DEFINER, owned by it), matching only the presented secret's hash.
-- A read; the caller refreshes last_used_at with touch_api_key when it is a minute old.
CREATE FUNCTION state.authenticate_api_key(p_hash bytea)
RETURNS TABLE (key_id uuid, org_id uuid, org_name text, role text, user_id uuid,
               expires_at timestamptz, revoked_at timestamptz, last_used_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT k.key_id, k.org_id, o.name, k.role, k.user_id, k.expires_at, k.revoked_at,
           k.last_used_at
    FROM state.api_keys k JOIN state.orgs o ON o.org_id = k.org_id
    WHERE k.secret_hash = p_hash
$$;

CREATE FUNCTION state.touch_api_key(p_key_id uuid) RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE state.api_keys SET last_used_at = now()
    WHERE key_id = p_key_id AND (last_used_at IS NULL OR last_used_at < now() - interval '60 seconds')
$$;
REVOKE ALL ON FUNCTION state.authenticate_api_key(bytea) FROM PUBLIC;
REVOKE ALL ON FUNCTION state.touch_api_key(uuid) FROM PUBLIC;
GRANT USAGE ON SCHEMA state TO trace_tenant, trace_system;
GRANT EXECUTE ON FUNCTION state.authenticate_api_key(bytea) TO trace_tenant, trace_system;
GRANT EXECUTE ON FUNCTION state.touch_api_key(uuid) TO trace_tenant, trace_system;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA state TO trace_system;
GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA state TO trace_system;
-- a new owner needs CREATE on the schema (unless a superuser migrates): only for this step
GRANT CREATE ON SCHEMA state TO trace_system;
ALTER FUNCTION state.authenticate_api_key(bytea) OWNER TO trace_system;
ALTER FUNCTION state.touch_api_key(uuid) OWNER TO trace_system;
REVOKE CREATE ON SCHEMA state FROM trace_system;
