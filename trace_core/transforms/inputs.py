"""What a UDF reads and how it is called: Query Service reads as Arrow, the sandbox invoker.

A UDF never opens a file or a database: the worker reads its inputs through the Query
Service pipeline (``QueryService.query_table``, in process: token check against the current
attempt, pinned grants, SQL gate, sandboxed DuckDB, audit row) with the attempt's capability
token, which reads exactly the versions pinned in the task payload. The Arrow tables then
cross into the sandbox as Arrow IPC streams (``trace_core.udf``'s ``RuntimeInvoker``).
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pyarrow as pa

from trace_core.errors import TransformOutputInvalid
from trace_core.query.service import QueryRequest, QueryService
from trace_core.runtime import Runtime
from trace_core.udf import RuntimeInvoker, UdfLimits, invoker_from_settings

# The embedded Query Service a worker opens per run: one engine worker process is enough.
EMBEDDED_ENGINE_WORKERS = 1

_invokers: dict[tuple[Any, ...], RuntimeInvoker] = {}
_invokers_lock = threading.Lock()


@contextmanager
def query_service(rt: Runtime, *, user_sql: bool = True) -> Iterator[QueryService]:
    """An open in-process Query Service over the runtime's databases and store.

    With ``user_sql`` (a SQL transform, an alert condition) DuckDB runs in one engine worker
    process, so SQL that crashes the engine costs only that process; Trace's own
    ``SELECT * FROM input`` reads run DuckDB in this process (same locked sandbox, same
    timeout), which saves the ~1.5 s of starting a worker per task."""
    workers = min(rt.settings.query_workers, EMBEDDED_ENGINE_WORKERS) if user_sql else 0
    local = rt.settings.model_copy(update={"query_workers": workers})
    service = QueryService(local, rt.dbs, rt.store, hot_sources=None)
    service.open()
    try:
        yield service
    finally:
        service.close()


def read_tables(service: QueryService, token: str, relations: Iterable[str]) -> dict[str, pa.Table]:
    """Each granted relation as a whole Arrow table (``SELECT *`` through the pipeline; names
    are validated slugs, so quoting is enough).
    Raises the Query Service's errors (``AccessDenied`` code ``stale_attempt`` when the
    attempt is no longer current)."""
    return {
        name: service.query_table(
            "task", token, QueryRequest(sql=f'SELECT * FROM "{name}"', max_rows=None)
        )
        for name in relations
    }


def run_sql(service: QueryService, token: str, sql: str) -> pa.Table:
    """One gated SELECT over the granted relations, as an Arrow table."""
    return service.query_table("task", token, QueryRequest(sql=sql, max_rows=None))


def to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def from_ipc(data: bytes, *, what: str) -> pa.Table:
    """Read a UDF's Arrow IPC output. Raises ``TransformOutputInvalid``."""
    try:
        return pa.ipc.open_stream(data).read_all()
    except (pa.ArrowInvalid, OSError) as exc:
        raise TransformOutputInvalid(f"{what} is not an Arrow IPC stream: {exc}") from None


def udf_limits(overrides: Mapping[str, Any]) -> UdfLimits:
    """The default ``UdfLimits`` with a job's ``limits:`` applied (``output_mb`` in MiB)."""
    fields = dict(overrides)
    if "output_mb" in fields:
        fields["max_output_bytes"] = int(fields.pop("output_mb")) * 1024 * 1024
    return UdfLimits(**fields)


def invoker(rt: Runtime) -> RuntimeInvoker:
    """The process's sandbox invoker for these UDF settings: warm workers are reused across
    tasks and runtimes, one pool per configuration, closed at interpreter exit."""
    s = rt.settings
    key = (s.udf_runtime, s.udf_pool_size, s.udf_bwrap_path, s.udf_lambda_function)
    with _invokers_lock:
        got = _invokers.get(key)
        if got is None:
            got = _invokers[key] = invoker_from_settings(s)
            atexit.register(got.close)
        return got
