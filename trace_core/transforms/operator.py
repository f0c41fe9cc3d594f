"""The ``udf_transform`` operator: pinned inputs in, one committed dataset version out.

Flow (the worker holds the lease and heartbeats): read each input through the in-process
Query Service with the attempt's capability token (exactly the pinned versions) -> a Python
transform: invoke ``main(tables) -> pa.Table`` in the sandbox with the bundle the payload
pins; a SQL transform: the gated SELECT is the output -> write one Parquet file -> stage it
under ``staging/{task_id}/{attempt}/`` -> return a ``Completion`` whose commit is
``datasets.commit.commit_version`` (fence, publish, register, announce, finish) in the
worker's completion transaction. The version id derives from the output, the range and the
config hash (code + pinned inputs), so a retry commits one version.

Errors: a UDF's own bug (``UdfError``: raises, wrong shape, over its limits) and an output
that cannot be a dataset (``TransformOutputInvalid``) are fatal after this attempt; a
sandbox crash (``UdfRuntimeError``) or ``SandboxUnavailable`` is retryable, as are Query
Service and storage failures.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from psycopg import Connection

from trace_core.datasets import ids
from trace_core.datasets.commit import StagedOutput, commit_version, stage_parquet_files
from trace_core.errors import AccessDenied, StaleAttempt, TransformOutputInvalid
from trace_core.operators.base import Completion, OperatorContext
from trace_core.transforms.inputs import (
    from_ipc,
    invoker,
    query_service,
    read_tables,
    run_sql,
    to_ipc,
    udf_limits,
)
from trace_core.transforms.tasks import OPERATOR, TransformPayload
from trace_core.udf import UdfInvocationPayload
from trace_core.udf.bundles import get_bundle

log = logging.getLogger(__name__)


def compute(ctx: OperatorContext, p: TransformPayload) -> pa.Table:
    """The transform's output table for this attempt. Raises as the module docstring says."""
    lease = ctx.lease
    try:
        with query_service(ctx.runtime, user_sql=p.code_kind == "sql") as service:
            if p.code_kind == "sql":
                assert p.sql is not None
                return run_sql(service, ctx.capability_token, p.sql)
            tables = read_tables(service, ctx.capability_token, p.inputs)
    except AccessDenied as exc:
        if exc.code == "stale_attempt":
            raise StaleAttempt(lease.task_id, lease.attempt, "attempt not current") from exc
        raise
    ctx.check_lease()
    assert p.bundle_sha256 is not None
    result = invoker(ctx.runtime).invoke(
        UdfInvocationPayload(
            kind="transform",
            entry="main",
            filename=f"{p.transform_name}.py",
            source=get_bundle(ctx.runtime, p.bundle_sha256),
            bundle_sha256=p.bundle_sha256,
            input=None,
            tables={name: to_ipc(t) for name, t in tables.items()},
            limits=udf_limits(p.limits),
            task_id=str(lease.task_id),
            attempt=lease.attempt,
            # a job's ranges run one after another in one warm process (docs/udf.md)
            reuse_scope=f"{ctx.runtime.settings.org_id}/transform/{p.job_name}/{p.transform_name}",
        )
    )
    if result.table is None:
        raise TransformOutputInvalid(
            f"transform {p.transform_name!r}: main(tables) must return a pyarrow.Table, "
            f"got {type(result.value).__name__}"
        )
    return from_ipc(result.table, what=f"transform {p.transform_name!r} output")


def check_output(p: TransformPayload, table: pa.Table) -> None:
    """Refuse an output no reader could use. Raises ``TransformOutputInvalid``."""
    names = table.column_names
    if not names:
        raise TransformOutputInvalid(f"transform {p.transform_name!r} returned no columns")
    if len(set(names)) != len(names) or any(not n for n in names):
        raise TransformOutputInvalid(
            f"transform {p.transform_name!r} returned empty or duplicate column names: {names}"
        )


def output_file_name(p: TransformPayload) -> str:
    return (
        f"network_{p.chain_id}__{p.output_key}__{p.range_start:08}_to_{p.range_end - 1:08}.parquet"
    )


def stage_output(ctx: OperatorContext, p: TransformPayload, table: pa.Table) -> StagedOutput:
    """Write the table as one Parquet file under the attempt's staging prefix."""
    lease = ctx.lease
    org_id = ctx.runtime.settings.org_id
    with tempfile.TemporaryDirectory(prefix="transform_") as tmp:
        path = Path(tmp) / output_file_name(p)
        try:
            pq.write_table(table, path, compression="zstd")
        except (pa.ArrowException, OSError) as exc:
            raise TransformOutputInvalid(
                f"transform {p.transform_name!r} output cannot be written as Parquet: {exc}"
            ) from None
        schema, files = stage_parquet_files(ctx.runtime.store, lease.task_id, lease.attempt, [path])
    return StagedOutput(
        task_id=lease.task_id,
        attempt=lease.attempt,
        org_id=str(org_id),
        dataset_uuid=ids.dataset_uuid(org_id, p.chain_id, p.output_key),
        dataset_key=p.output_key,
        chain_id=p.chain_id,
        range_start=p.range_start,
        range_end=p.range_end,
        config_hash=p.config_hash(),
        schema=schema,
        files=files,
    )


def udf_transform_operator(ctx: OperatorContext) -> Completion:
    """Worker entry point: compute and stage under the heartbeat; commit in the fenced
    completion transaction (which also announces the version, so downstream transforms and
    alerts of the job run next)."""
    lease = ctx.lease
    p = TransformPayload.parse(lease.payload)
    table = compute(ctx, p)
    check_output(p, table)
    ctx.check_lease()
    staged = stage_output(ctx, p, table)
    store = ctx.runtime.store
    outputs: dict[str, Any] = {"transform": p.transform_name, "rows": table.num_rows}
    log.info(
        "transform computed",
        extra={
            "task_id": str(lease.task_id),
            "attempt": lease.attempt,
            "transform": p.transform_name,
            "rows": table.num_rows,
            "range": f"{p.range_start}:{p.range_end}",
        },
    )

    def commit(conn: Connection[Any]) -> dict[str, Any]:
        committed = commit_version(
            conn, store, staged, lease=lease, announce=True, job_name=p.job_name
        )
        return {**committed.outputs(), **outputs}

    return Completion(outputs=outputs, commit=commit)


def register(registry: Any) -> None:
    """Add ``udf_transform`` to an ``OperatorRegistry``."""
    registry.register(OPERATOR, udf_transform_operator, queries=True)
