"""The UDF contract: what an invoker is handed (``UdfInvocationPayload``), what it returns
(``UdfResult``), the limits a call runs under (``UdfLimits``) and the ``RuntimeInvoker``
protocol every runtime implements (local sandbox, AWS Lambda, unsandboxed dev mode).

Pure values, no I/O: ``trace_core.udf.local`` and ``trace_core.udf.aws`` do the invoking.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator

UdfKind = Literal["function", "transform", "alert"]

#: Every ``UdfError.cause``; docs/udf.md explains each.
UDF_CAUSES = (
    "syntax",  # the source does not compile
    "import",  # the module imports something the sandbox does not offer
    "missing_entry",  # no callable with the entry's name
    "raised",  # the module or the entry raised
    "wrong_shape",  # a transform that returns no table, an alert that returns no list of dicts
    "not_serializable",  # a function's value (or an event) is not JSON
    "output_too_large",  # the result is past limits.max_output_bytes
    "input_too_large",  # the payload is past limits.max_input_bytes
    "wall_time",  # past limits.wall_seconds
    "cpu_time",  # past limits.cpu_seconds
    "memory",  # past limits.memory_mb
    "sandbox_violation",  # a forbidden system call (fork, exec, socket, ptrace, mount, kill...)
    "crashed",  # the UDF's process died of a signal it brought on itself (e.g. ctypes)
    "bad_output",  # the UDF wrote garbage into the result channel
)


class UdfLimits(BaseModel):
    """Per-call limits; a job overrides any of them (``limits:`` in its YAML)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    memory_mb: int = Field(
        default=128,
        ge=16,
        le=16384,
        description="Memory the UDF may allocate on top of the runtime's",
    )
    wall_seconds: float = Field(
        default=30.0, gt=0, le=900, description="Wall-clock time of one call"
    )
    cpu_seconds: int = Field(
        default=30, ge=1, le=900, description="CPU time of one call (all threads)"
    )
    max_output_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=1024,
        description="Largest result (JSON value, table or events)",
    )
    max_input_bytes: int = Field(
        default=512 * 1024 * 1024, ge=1024, description="Largest payload (source, input and tables)"
    )
    max_file_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=0,
        description="Largest file the UDF may write (under its /tmp)",
    )
    max_log_bytes: int = Field(
        default=64 * 1024, ge=0, description="What the UDF prints is kept up to this many bytes"
    )


class UdfInvocationPayload(BaseModel):
    """One call of a UDF. ``source`` is the module's Python text; ``bundle_sha256`` names the
    stored bundle it came from (``trace_core.udf.bundles``), so a task pins the code it ran.
    A function gets ``input`` (JSON); a transform gets ``tables`` (name -> Arrow IPC stream
    bytes) as a dict of ``pyarrow.Table``; an alert gets the single table in ``tables``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: UdfKind = "function"
    entry: str = Field("main", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    source: str
    filename: str = Field(default="udf.py", description="Shown in the UDF's own tracebacks")
    bundle_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    input: JsonValue = None
    tables: dict[str, bytes] = Field(default_factory=dict)
    limits: UdfLimits = Field(default_factory=UdfLimits)
    task_id: str | None = None
    attempt: int | None = None
    reuse_scope: str | None = Field(
        default=None,
        max_length=512,
        description="Calls with the same scope, code, entry and limits may run one after "
        "another in the same warm process (module globals persist between them, as in a warm "
        "Lambda); None: a fresh process per call. Never share a scope across orgs or jobs.",
    )

    @model_validator(mode="after")
    def _check_shape(self) -> UdfInvocationPayload:
        if self.kind == "alert" and len(self.tables) != 1:
            raise ValueError("an alert UDF takes exactly one table (its rows)")
        if self.bundle_sha256 is not None and self.bundle_sha256 != source_sha256(self.source):
            raise ValueError("bundle_sha256 does not match the source")
        return self

    def reuse_key(self) -> str | None:
        """The warm process this call may share (None: a fresh one): a digest of the scope,
        the code, the entry point and the limits."""
        if self.reuse_scope is None:
            return None
        parts = [self.reuse_scope, self.kind, self.entry, self.filename, self.source]
        parts.append(self.limits.model_dump_json())
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]

    def input_bytes(self) -> int:
        return len(self.source.encode()) + sum(len(b) for b in self.tables.values())

    def log_fields(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "entry": self.entry,
            "bundle": (self.bundle_sha256 or source_sha256(self.source))[:12],
            "task_id": self.task_id,
            "attempt": self.attempt,
        }


class UdfStats(BaseModel):
    model_config = ConfigDict(frozen=True)

    wall_ms: float = 0.0
    cpu_ms: float = 0.0
    max_rss_kb: int = 0
    output_bytes: int = 0


class UdfResult(BaseModel):
    """What a call returned: ``value`` (function), ``table`` (transform, Arrow IPC stream
    bytes) or ``events`` (alert), plus what the UDF printed (``logs``, capped) and ``stats``."""

    model_config = ConfigDict(frozen=True)

    value: JsonValue = None
    table: bytes | None = None
    events: list[dict[str, JsonValue]] = Field(default_factory=list)
    logs: str = ""
    stats: UdfStats = Field(default_factory=UdfStats)
    runtime: str = "local"


@runtime_checkable
class RuntimeInvoker(Protocol):
    """Runs one UDF call somewhere isolated. Raises ``UdfError`` (the UDF's fault, fatal),
    ``UdfRuntimeError`` (the runtime's, retryable) or ``SandboxUnavailable`` (fail closed)."""

    name: str

    def invoke(self, payload: UdfInvocationPayload) -> UdfResult: ...

    def close(self) -> None: ...


def source_sha256(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()
