"""Names the stack shares with Trace itself: object-store prefixes, queue names, ports and
secret names."""

# Prefixes under the datasets bucket's TRACE_OBJECT_STORE_URL (s3://bucket/trace): see
# trace_core.datasets.ids (staging_prefix, version_prefix).
STORE_PREFIX = "trace"
STAGING = f"{STORE_PREFIX}/staging/"
VERSIONS = f"{STORE_PREFIX}/cryo/"
RESULTS = f"{STORE_PREFIX}/results/"  # trace_core.query.export
BUNDLES = f"{STORE_PREFIX}/udf/bundles/"  # trace_core.udf.bundles (UDF code, by sha256)
BATCHES = f"{STORE_PREFIX}/batches/"  # trace_core.sinks.publish (sink batches)
COMPUTE_LOGS = "dagster-compute-logs/"
# Logical queue names as trace_core.queue.base spells them (TASK_WAKEUP, BUFFER_QUEUE).
QUEUES = {"Task": "task_wakeup", "Buffer": "buffer"}
QUERY_PORT = 8090
WEB_PORT = 3000
PG_PORT = 5432
SECRET_NAMES = {
    "TRACE_DATABASE_URL": "database-url",
    "DAGSTER_PG_URL": "dagster-pg-url",
    "TRACE_JWT_KEYS": "jwt-keys",
    "TRACE_RPC_POOL_STANDARD_URL": "rpc-standard",
}
# Characters that would need escaping inside a postgresql:// URL.
URL_UNSAFE = " %+~`#$&*()|[]{}:;<>?!'/@\"\\=,.^"
