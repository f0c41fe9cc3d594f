-- Analytics (state database): chain_sync jobs that carry an `analytics:` block.

-- name: analytics_jobs
SELECT name, chain_id, source_file, spec -> 'analytics' AS analytics, spec -> 'streams' AS streams
FROM state.chain_sync_jobs
WHERE org_id = %(org_id)s AND jsonb_typeof(spec -> 'analytics') = 'object'
  AND (%(job)s::text IS NULL OR name = %(job)s)
ORDER BY name
