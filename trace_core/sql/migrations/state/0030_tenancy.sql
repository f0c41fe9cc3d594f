-- Tenancy (issue 22): organisations, users, the four roles, memberships, API keys and task
-- inputs. Existing single-org data belongs to the default org (settings.DEFAULT_ORG_ID,
-- named 'default'). Row-level security on these and every other tenant table: 0032_rls.sql.

CREATE TABLE state.orgs (
    org_id     uuid PRIMARY KEY,
    name       text        NOT NULL UNIQUE
               CHECK (name ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO state.orgs (org_id, name)
VALUES ('00000000-0000-0000-0000-000000000001', 'default');

-- A person (or a service identity); global, since one user may belong to many orgs.
CREATE TABLE state.users (
    user_id    uuid PRIMARY KEY,
    email      text        NOT NULL UNIQUE CHECK (email ~ '^[^@\s]+@[^@\s]+$'),
    name       text,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The role catalogue, ordered: a role permits everything a lower rank does.
CREATE TABLE state.org_roles (
    role        text PRIMARY KEY,
    rank        integer NOT NULL UNIQUE,
    description text    NOT NULL
);
INSERT INTO state.org_roles (role, rank, description) VALUES
    ('viewer', 10, 'read datasets, jobs, alerts, events and query'),
    ('editor', 20, 'viewer, plus write jobs, alerts and UDFs'),
    ('admin',  30, 'editor, plus manage API keys and members'),
    ('owner',  40, 'admin, plus the org itself');

CREATE TABLE state.org_role_memberships (
    org_id     uuid        NOT NULL REFERENCES state.orgs (org_id),
    user_id    uuid        NOT NULL REFERENCES state.users (user_id),
    role       text        NOT NULL REFERENCES state.org_roles (role),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, user_id)
);
CREATE INDEX org_role_memberships_user_idx ON state.org_role_memberships (user_id);

-- API keys: only the sha256 of the secret is stored; prefix is what lists show.
CREATE TABLE state.api_keys (
    key_id       uuid PRIMARY KEY,
    org_id       uuid        NOT NULL REFERENCES state.orgs (org_id),
    user_id      uuid        REFERENCES state.users (user_id),
    name         text,
    role         text        NOT NULL REFERENCES state.org_roles (role),
    prefix       text        NOT NULL,
    secret_hash  bytea       NOT NULL UNIQUE CHECK (length(secret_hash) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    last_used_at timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX api_keys_org_idx ON state.api_keys (org_id, created_at);

-- What a task reads: one row per pinned input version, so credentials and tokens for an
-- attempt can be derived from state (never from the payload alone).
CREATE TABLE state.task_inputs (
    org_id          uuid        NOT NULL,
    task_id         uuid        NOT NULL REFERENCES state.tasks (task_id) ON DELETE CASCADE,
    dataset_version uuid        NOT NULL REFERENCES state.dataset_versions (dataset_version),
    dataset_uuid    uuid        NOT NULL,
    storage_prefix  text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task_id, dataset_version)
);
CREATE INDEX task_inputs_org_idx ON state.task_inputs (org_id, task_id);
