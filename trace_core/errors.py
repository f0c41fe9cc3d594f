"""One error hierarchy for Trace.

``RetryableError`` means "try again later, the input was fine"; ``FatalError`` means
"retrying cannot help". Adapters translate driver errors into these with ``raise ... from exc``.
"""

from __future__ import annotations

from typing import Any


class TraceError(Exception):
    """Root of every error Trace raises on purpose."""

    code = "trace_error"

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields

    def __str__(self) -> str:
        return self.message


class RetryableError(TraceError):
    """A transient failure: the same work may succeed on a later attempt."""

    code = "retryable"


class FatalError(TraceError):
    """A permanent failure: retrying the same input cannot succeed."""

    code = "fatal"


# --- configuration and input -------------------------------------------------------------


class ConfigError(FatalError):
    """Bad configuration or job file. Names the file, line and field path when known."""

    code = "config_error"

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        where = []
        if file:
            where.append(file if line is None else f"{file}:{line}")
        elif line is not None:
            where.append(f"line {line}")
        if field:
            where.append(field)
        full = f"{': '.join(where)}: {message}" if where else message
        super().__init__(full, file=file, line=line, field=field)
        self.file = file
        self.line = line
        self.field = field
        self.reason = message  # without the file:line: field prefix


class InvalidJobFile(ConfigError):
    """A job file with one or more problems.

    ``problems`` holds each as a ``ConfigError`` (in file order); this error's own file, line
    and field are the first problem's, and ``str()`` lists every problem on its own line.
    """

    code = "invalid_job_file"

    def __init__(self, problems: list[ConfigError]) -> None:
        first = problems[0]
        super().__init__("", file=first.file, line=first.line, field=first.field)
        self.problems = list(problems)
        self.message = "\n".join(str(p) for p in self.problems)
        self.args = (self.message,)


class ChainSyncJobNotFound(FatalError):
    """No chain_sync job has this name or id (in this org)."""

    code = "chain_sync_job_not_found"

    def __init__(self, ref: object) -> None:
        super().__init__(f"chain_sync job not found: {ref}", job=str(ref))
        self.ref = ref


class UnknownStream(FatalError):
    """A chain_sync job has no stream with this key."""

    code = "unknown_stream"

    def __init__(self, job: object, stream: str, known: list[str] | None = None) -> None:
        hint = f" (streams: {', '.join(known)})" if known else ""
        super().__init__(f"job {job} has no stream {stream!r}{hint}", job=str(job), stream=stream)


class UnknownRange(FatalError):
    """No planned range of a chain_sync job (or stream) matches this block range."""

    code = "unknown_range"

    def __init__(self, job: object, stream: str | None, block_range: str) -> None:
        where = f"job {job}" + (f" stream {stream}" if stream else "")
        super().__init__(
            f"no planned range {block_range} in {where} (trace-lite status --job {job} --json "
            "lists them)",
            job=str(job),
            stream=stream,
            range=block_range,
        )


class InvalidPayload(FatalError):
    """A task or message payload that does not match its contract."""

    code = "invalid_payload"


class InvalidBatch(FatalError):
    """A buffered sink batch that breaks its destination's schema.

    Names where: ``row`` (0-based index, when staging) or ``line`` (1-based, in the JSONL
    object), and the ``field`` path. Never carries row contents.
    """

    code = "invalid_batch"

    def __init__(
        self,
        message: str,
        *,
        destination: str | None = None,
        key: str | None = None,
        row: int | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        where = [w for w in (destination, key) if w]
        if row is not None:
            where.append(f"row {row}")
        if line is not None:
            where.append(f"line {line}")
        parts = [" ".join(where)] if where else []
        parts += [field] if field else []
        full = ": ".join([*parts, message])
        super().__init__(full, destination=destination, key=key, row=row, line=line, field=field)
        self.destination = destination
        self.key = key
        self.row = row
        self.line = line
        self.field = field


# --- database ----------------------------------------------------------------------------


class DatabaseUnreachable(RetryableError):
    """Postgres could not be reached. The message names host and database, never the password."""

    code = "database_unreachable"


class DatabaseError(RetryableError):
    """Postgres refused a statement (``sqlstate`` names why); translated from the driver's
    error, which stays as the cause (``trace_core.db.errors``)."""

    code = "database_error"


# --- task lifecycle ----------------------------------------------------------------------


class UnknownTask(TraceError):
    code = "unknown_task"

    def __init__(self, task_id: object) -> None:
        super().__init__(f"unknown task {task_id}", task_id=str(task_id))
        self.task_id = task_id


class LeaseConflict(TraceError):
    """The task cannot be claimed now (leased by another attempt, finished, or paused)."""

    code = "lease_conflict"

    def __init__(self, task_id: object, reason: str) -> None:
        super().__init__(
            f"task {task_id} not claimable: {reason}", task_id=str(task_id), reason=reason
        )
        self.task_id = task_id
        self.reason = reason


class StaleAttempt(TraceError):
    """A heartbeat, completion or commit from an attempt that no longer holds the lease."""

    code = "stale_attempt"

    def __init__(self, task_id: object, attempt: int, detail: str = "") -> None:
        msg = f"stale attempt {attempt} for task {task_id}"
        super().__init__(
            msg + (f": {detail}" if detail else ""), task_id=str(task_id), attempt=attempt
        )
        self.task_id = task_id
        self.attempt = attempt


# --- queue -------------------------------------------------------------------------------


class StaleReceipt(TraceError):
    """An ack or visibility change with a receipt that is no longer current."""

    code = "stale_receipt"


class QueueError(RetryableError):
    code = "queue_error"


class OutboxOnly(FatalError):
    """A task wake-up was published by something other than the outbox (invariant 4): a bug."""

    code = "outbox_only"


# --- storage and datasets ----------------------------------------------------------------


class StorageError(RetryableError):
    code = "storage_error"


class ObjectNotFound(StorageError):
    code = "object_not_found"


class InvalidObjectKey(FatalError):
    """An object key with '..', a leading '/', a backslash or an empty segment."""

    code = "invalid_object_key"


class ObjectTooLarge(FatalError):
    """An object read with ``max_bytes`` turned out larger (a manifest past its cap, ...)."""

    code = "object_too_large"


class UnknownCryoDataset(FatalError):
    """A dataset name cryo_ingest cannot extract (unknown, an alias, or needs extra inputs)."""

    code = "unknown_cryo_dataset"


class CryoFailed(RetryableError):
    """cryo raised or reported errored chunks after the RPC answered its probe."""

    code = "cryo_failed"


class StagingFull(CryoFailed):
    """cryo failed and the local staging filesystem is (nearly) full: free space, then retry."""

    code = "staging_full"


class ArtifactInvalid(FatalError):
    """Extracted files that break their contract (unreadable Parquet, mixed schemas)."""

    code = "artifact_invalid"


class DatasetConflict(FatalError):
    """A second registration of a range that differs from the committed one."""

    code = "dataset_conflict"


class ArtifactCapExceeded(FatalError):
    code = "artifact_cap_exceeded"


class CoverageError(RetryableError):
    """Extracted data does not cover the requested block range exactly."""

    code = "coverage_error"


class RpcError(RetryableError):
    """A JSON-RPC call failed (unreachable, timeout, HTTP or RPC error). Never names the URL."""

    code = "rpc_error"


# --- query service -----------------------------------------------------------------------


class QueryError(FatalError):
    """A query the Query Service refuses or cannot answer; ``code`` is the API error code."""

    code = "query_error"

    def __init__(self, message: str, *, code: str | None = None, **fields: Any) -> None:
        super().__init__(message, **fields)
        if code is not None:
            self.code = code


class SqlRejected(QueryError):
    """The SQL gate refused the statement; ``code`` names the rule (``sql_*``)."""

    code = "sql_rejected"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code=code)


class TokenInvalid(QueryError):
    """A missing, malformed, expired or wrongly signed bearer token."""

    code = "token_invalid"


class AccessDenied(QueryError):
    """A valid token that does not grant the request (dataset grant, stale task attempt)."""

    code = "access_denied"


class ManifestInvalid(QueryError):
    """A dataset manifest that violates its contract (schema, ids, keys, caps)."""

    code = "manifest_invalid"


class TooLarge(QueryError):
    """An input or resource over its cap (SQL, manifest, memory)."""

    code = "too_large"


class QueryTimeout(QueryError):
    code = "query_timeout"


class QueryFailed(QueryError):
    """The engine could not run a gated query (bad column, type error, ...)."""

    code = "query_failed"


# --- hot path ----------------------------------------------------------------------------


class ReorgTooDeep(FatalError):
    """A reorg deeper than the follower may repair (past its limit or into compacted blocks)."""

    code = "reorg_too_deep"

    def __init__(self, chain_id: int, *, depth: int, detail: str) -> None:
        super().__init__(
            f"chain {chain_id}: reorg of depth >= {depth}: {detail}", chain_id=chain_id, depth=depth
        )
        self.chain_id = chain_id
        self.depth = depth


class ChainMismatch(FatalError):
    """The RPC endpoint serves another chain than the one expected."""

    code = "chain_mismatch"


# --- alerts ------------------------------------------------------------------------------


class AlertNotFound(FatalError):
    """No alert definition has this name or id (in this org)."""

    code = "alert_not_found"


class AlertResultInvalid(FatalError):
    """An alert condition's result rows cannot become events (a dedupe_key column missing or
    NULL, no block_number, too many rows). Retrying the same data cannot help."""

    code = "alert_result_invalid"


class QueryServiceUnavailable(RetryableError):
    """The Query Service could not be reached or answered 5xx/timeout: try again later."""

    code = "query_service_unavailable"


# --- the HTTP API (trace_core.api) -----------------------------------------------------------


class ApiRefused(FatalError):
    """A request the HTTP API refuses before or instead of acting: its HTTP ``status`` (404 not
    found or another org's, 409 conflict, 413 too large, 422 invalid, 429 rate limited) and a
    stable ``code``. Nothing was changed."""

    code = "api_refused"

    def __init__(self, message: str, *, code: str, status: int, **fields: object) -> None:
        super().__init__(message, status=status, **fields)
        self.code = code
        self.status = status


# --- analytics -----------------------------------------------------------------------------


class DatasetNotSynced(FatalError):
    """An analytics input has no committed version for (part of) the blocks it needs.

    Names the job, the stream and the missing end-exclusive ranges."""

    code = "dataset_not_synced"


class AnalyticsFailed(FatalError):
    """An analytics computation met data it cannot compute exactly (e.g. a value past 2**127)."""

    code = "analytics_failed"


class TransformNotFound(FatalError):
    """No transform job with that name in the org."""

    code = "transform_not_found"


class TransformOutputInvalid(FatalError):
    """A transform produced something that cannot become a dataset version (wrong shape,
    no columns, unwritable types): a bug of the job, so retrying cannot help."""

    code = "transform_output_invalid"


class SourceRejected(FatalError):
    """A trigger (webhook, cron, manual) refused before anything was written: unknown job,
    trigger not enabled, bad signature, oversized body, an idempotency key reused for another
    request. ``status`` is the HTTP status the webhook endpoint answers."""

    def __init__(self, message: str, *, code: str, status: int, **fields: Any) -> None:
        super().__init__(message, status=status, **fields)
        self.code = code
        self.status = status


# --- user code (UDFs) --------------------------------------------------------------------


class UdfError(FatalError):
    """A UDF's own bug: it does not parse, lacks its entry, raises, returns the wrong shape or
    too much, or breaks a limit or the sandbox. ``cause`` names which (see ``UDF_CAUSES`` in
    ``trace_core.udf.payload``); ``user_traceback`` is the function's own traceback, trimmed.
    Fatal: the same code on the same input fails the same way."""

    code = "udf_error"

    def __init__(
        self,
        cause: str,
        message: str,
        *,
        user_traceback: str | None = None,
        exc_type: str | None = None,
        line: int | None = None,
    ) -> None:
        super().__init__(f"udf {cause}: {message}", cause=cause, exc_type=exc_type, line=line)
        self.cause = cause
        self.detail = message
        self.user_traceback = user_traceback
        self.exc_type = exc_type
        self.line = line


class UdfRuntimeError(RetryableError):
    """The UDF runtime itself failed (a worker died, a broken pipe, Lambda throttled or
    unreachable): the code and input may well be fine, so the call may be retried."""

    code = "udf_runtime_error"


class SandboxUnavailable(FatalError):
    """The UDF sandbox cannot be set up on this host (no bwrap, no namespaces, no seccomp).
    UDFs are refused rather than run unsandboxed; the message says what is missing."""

    code = "sandbox_unavailable"


# --- tenancy: authentication and authorization (HTTP status in ``http_status``) ---------


class Unauthenticated(FatalError):
    """No valid credential: an unknown, malformed, expired or revoked API key. The message
    never echoes the key."""

    code = "unauthenticated"
    http_status = 401


class Forbidden(FatalError):
    """A valid credential whose role is too low for the action."""

    code = "forbidden"
    http_status = 403


class NotFound(FatalError):
    """No such object in the caller's org. Another org's object answers this too (never
    ``Forbidden``), so its existence does not leak."""

    code = "not_found"
    http_status = 404


class Conflict(FatalError):
    """The object already exists (an org or user name taken, a duplicate membership)."""

    code = "conflict"
    http_status = 409
