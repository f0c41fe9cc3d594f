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


class InvalidPayload(FatalError):
    """A task or message payload that does not match its contract."""

    code = "invalid_payload"


# --- database ----------------------------------------------------------------------------


class DatabaseUnreachable(RetryableError):
    """Postgres could not be reached. The message names host and database, never the password."""

    code = "database_unreachable"


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
        super().__init__(f"task {task_id} not claimable: {reason}", task_id=str(task_id), reason=reason)
        self.task_id = task_id
        self.reason = reason


class StaleAttempt(TraceError):
    """A heartbeat, completion or commit from an attempt that no longer holds the lease."""

    code = "stale_attempt"

    def __init__(self, task_id: object, attempt: int, detail: str = "") -> None:
        msg = f"stale attempt {attempt} for task {task_id}"
        super().__init__(msg + (f": {detail}" if detail else ""), task_id=str(task_id), attempt=attempt)
        self.task_id = task_id
        self.attempt = attempt


# --- queue -------------------------------------------------------------------------------


class StaleReceipt(TraceError):
    """An ack or visibility change with a receipt that is no longer current."""

    code = "stale_receipt"


class QueueError(RetryableError):
    code = "queue_error"


# --- storage and datasets ----------------------------------------------------------------


class StorageError(RetryableError):
    code = "storage_error"


class ObjectNotFound(StorageError):
    code = "object_not_found"


class DatasetConflict(FatalError):
    """A second registration of a range that differs from the committed one."""

    code = "dataset_conflict"


class ArtifactCapExceeded(FatalError):
    code = "artifact_cap_exceeded"


class CoverageError(RetryableError):
    """Extracted data does not cover the requested block range exactly."""

    code = "coverage_error"


class RpcError(RetryableError):
    code = "rpc_error"
