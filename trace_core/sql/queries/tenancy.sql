-- Tenancy: orgs, users, memberships, API keys, the audit of security events (state database).
-- Reads and writes of one org's rows run inside tenant_scope (row-level security applies).

-- name: insert_org
INSERT INTO state.orgs (org_id, name) VALUES (%(org_id)s, %(name)s)
ON CONFLICT DO NOTHING
RETURNING org_id, name, created_at

-- name: org_by_name
SELECT org_id, name, created_at FROM state.orgs WHERE name = %(name)s

-- name: org_by_id
SELECT org_id, name, created_at FROM state.orgs WHERE org_id = %(org_id)s

-- name: list_orgs
SELECT org_id, name, created_at FROM state.orgs ORDER BY name

-- name: insert_user
INSERT INTO state.users (user_id, email, name) VALUES (%(user_id)s, %(email)s, %(name)s)
ON CONFLICT (email) DO NOTHING
RETURNING user_id, email, name, created_at

-- name: user_by_email
SELECT user_id, email, name, created_at FROM state.users WHERE email = %(email)s

-- name: upsert_membership
INSERT INTO state.org_role_memberships (org_id, user_id, role)
VALUES (%(org_id)s, %(user_id)s, %(role)s)
ON CONFLICT (org_id, user_id) DO UPDATE SET role = EXCLUDED.role, updated_at = now()
RETURNING org_id, user_id, role, created_at

-- name: list_members
SELECT m.user_id, u.email, u.name, m.role, m.created_at
FROM state.org_role_memberships m JOIN state.users u ON u.user_id = m.user_id
WHERE m.org_id = %(org_id)s
ORDER BY u.email

-- name: membership_role
SELECT role FROM state.org_role_memberships WHERE org_id = %(org_id)s AND user_id = %(user_id)s

-- name: delete_membership
DELETE FROM state.org_role_memberships WHERE org_id = %(org_id)s AND user_id = %(user_id)s

-- name: insert_key
INSERT INTO state.api_keys (key_id, org_id, user_id, name, role, prefix, secret_hash, expires_at)
VALUES (%(key_id)s, %(org_id)s, %(user_id)s, %(name)s, %(role)s, %(prefix)s, %(secret_hash)s,
        %(expires_at)s)
RETURNING key_id, org_id, user_id, name, role, prefix, created_at, expires_at, last_used_at,
          revoked_at

-- name: list_keys
SELECT key_id, org_id, user_id, name, role, prefix, created_at, expires_at, last_used_at,
       revoked_at
FROM state.api_keys WHERE org_id = %(org_id)s ORDER BY created_at, key_id

-- name: revoke_key
UPDATE state.api_keys SET revoked_at = now()
WHERE org_id = %(org_id)s AND key_id = %(key_id)s AND revoked_at IS NULL
RETURNING key_id

-- name: key_exists
SELECT 1 FROM state.api_keys WHERE org_id = %(org_id)s AND key_id = %(key_id)s

-- name: authenticate
SELECT key_id, org_id, org_name, role, user_id, expires_at, revoked_at, last_used_at
FROM state.authenticate_api_key(%(secret_hash)s)

-- name: touch_key
SELECT state.touch_api_key(%(key_id)s)

-- name: insert_audit_event
INSERT INTO state.audit_events (org_id, actor, action, outcome, detail)
VALUES (%(org_id)s, %(actor)s, %(action)s, %(outcome)s, %(detail)s)

-- name: insert_task_inputs
INSERT INTO state.task_inputs (org_id, task_id, dataset_version, dataset_uuid, storage_prefix)
SELECT t.org_id, t.task_id, v.dataset_version, v.dataset_uuid, v.storage_prefix
FROM state.tasks t, state.dataset_versions v
WHERE t.task_id = %(task_id)s AND v.dataset_version = ANY(%(versions)s::uuid[])
ON CONFLICT (task_id, dataset_version) DO NOTHING

-- name: task_inputs
SELECT org_id, task_id, dataset_version, dataset_uuid, storage_prefix
FROM state.task_inputs WHERE task_id = %(task_id)s ORDER BY dataset_version
