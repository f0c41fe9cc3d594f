-- UDF bundles: content-addressed code (state.udf_bundles) and named versions.

-- name: insert_bundle
INSERT INTO state.udf_bundles (org_id, sha256, object_key, size_bytes)
VALUES (%(org_id)s, %(sha256)s, %(object_key)s, %(size_bytes)s)
ON CONFLICT (org_id, sha256) DO NOTHING

-- name: bundle_key
SELECT object_key FROM state.udf_bundles WHERE org_id = %(org_id)s AND sha256 = %(sha256)s

-- name: lock_bundle_name
SELECT pg_advisory_xact_lock(hashtextextended(%(org_id)s::text || '/' || %(name)s, 21))

-- name: latest_version
SELECT version, sha256 FROM state.udf_bundle_versions
WHERE org_id = %(org_id)s AND name = %(name)s
ORDER BY version DESC LIMIT 1

-- name: insert_version
INSERT INTO state.udf_bundle_versions (org_id, name, version, sha256)
VALUES (%(org_id)s, %(name)s, %(version)s, %(sha256)s)

-- name: versions
SELECT version, sha256, created_at FROM state.udf_bundle_versions
WHERE org_id = %(org_id)s AND name = %(name)s
ORDER BY version
