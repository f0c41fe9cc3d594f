"""The cryo_ingest operator: one block range of one cryo dataset into a committed version.

Flow (the caller holds the lease): parse the payload -> extract into a private local staging
dir ``{staging_dir}/{task_id}/{attempt}/`` (real cryo, or fake Parquet with cryo's exact
schemas) while a background thread heartbeats -> check artifact caps and coverage -> upload
to the store's staging prefix -> ``commit_version`` (fence first; one transaction).

Error classes: bad payload, unknown dataset, wrong chain, caps, mixed schemas -> FatalError;
unreachable RPC, cryo failures, missing blocks or rows -> RetryableError; a lost lease ->
StaleAttempt (nothing committed).
"""

from __future__ import annotations

import concurrent.futures
import logging
import re
import shutil
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from psycopg import Connection

from trace_core import profile
from trace_core.datasets.commit import (
    CommittedVersion,
    StagedOutput,
    commit_version,
    stage_parquet_files,
)
from trace_core.errors import (
    ArtifactCapExceeded,
    ArtifactInvalid,
    ConfigError,
    CoverageError,
)
from trace_core.operators import cryo_logcheck
from trace_core.operators.base import Completion, OperatorContext
from trace_core.operators.cryo_fake import extract_fake
from trace_core.operators.cryo_payload import CryoIngestTask
from trace_core.operators.cryo_real import extract_real
from trace_core.operators.payload import (
    RangeLabel,
)
from trace_core.rpc.client import JsonRpc
from trace_core.rpc.limits import PoolLimits, extraction_slot, pool_limits
from trace_core.rpc.pool import RpcPool, shared_pool
from trace_core.settings import Settings, rpc_pool_env_var, rpc_pool_url
from trace_core.storage.base import ObjectStore
from trace_core.tasks.keepalive import LeaseHeartbeat, StateConnect, lease_heartbeat
from trace_core.tasks.lifecycle import Lease

log = logging.getLogger(__name__)

Mode = Literal["real", "fake"]

# cryo names files {network}__{dataset}__{first:08}_to_{last:08}.parquet (network: "ethereum"
# for chain 1, "network_{chain_id}" for chains it does not know).
_FILE_RANGE = re.compile(
    r"^(?P<net>[a-z0-9_]+?)__(?P<ds>[a-z0-9_]+)__(?P<a>\d+)_to_(?P<b>\d+)\.parquet$"
)


def choose_mode(
    settings: Settings, rpc_pool: str | None, environ: Mapping[str, str] | None = None
) -> tuple[Mode, str | None]:
    """``(mode, rpc_url)``: fake only when ``TRACE_CRYO_MODE=fake`` is set explicitly;
    otherwise real, which needs the pool's URL.

    Raises ``ConfigError`` naming the env var when real mode has no URL (never falls back to
    fake: made-up data must not pass for the chain's).
    """
    if settings.cryo_mode == "fake":
        return "fake", None
    url = rpc_pool_url(rpc_pool, environ) if rpc_pool else None
    if url is None:
        field = rpc_pool_env_var(rpc_pool) if rpc_pool else "rpc_pool"
        raise ConfigError(
            f"{field} is not set: real extraction needs the pool's RPC URL "
            "(TRACE_CRYO_MODE=fake makes up data, marked fake)",
            field=field,
        )
    return "real", url


# --- extraction ----------------------------------------------------------------------------


def open_pool(p: CryoIngestTask, settings: Settings, environ: Mapping[str, str] | None) -> RpcPool:
    """The task's RPC pool from the environment, shared by the process's attempts (never
    closed here: ``shared_pool``). Raises ``ConfigError`` naming the variable."""
    if p.rpc_pool is None:
        raise ConfigError("real cryo mode needs the payload's rpc_pool", field="rpc_pool")
    return shared_pool(p.rpc_pool, settings, environ)


class _Prefetch:
    """The logs check's header blooms, fetched on a thread while cryo extracts the range."""

    def __init__(self) -> None:
        self._future: concurrent.futures.Future[dict[int, bytes]] | None = None

    def start(self, rpc: JsonRpc, start: int, end: int) -> None:
        executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="trace-headers")
        self._future = executor.submit(cryo_logcheck.header_blooms, rpc, start, end)
        executor.shutdown(wait=False)

    def result(self) -> dict[int, bytes] | None:
        """The fetched blooms (raising what the fetch raised), or None if never started."""
        return None if self._future is None else self._future.result()


# --- verification --------------------------------------------------------------------------


def collect_files(out_dir: Path) -> list[Path]:
    """Parquet files under ``out_dir`` (cryo's ``.cryo/`` reports skipped), sorted by name."""
    return sorted(
        p
        for p in out_dir.rglob("*")
        if p.is_file()
        and p.suffix.lower() == ".parquet"
        and ".cryo" not in p.relative_to(out_dir).parts
    )


def check_caps(files: list[Path], settings: Settings) -> None:
    """Raise ``ArtifactCapExceeded`` past the files/bytes-per-file/bytes-per-range caps."""
    if len(files) > settings.max_parquet_files_per_range:
        raise ArtifactCapExceeded(
            f"{len(files)} Parquet files exceed the cap of {settings.max_parquet_files_per_range} per range"
        )
    total = 0
    for path in files:
        size = path.stat().st_size
        total += size
        if size > settings.max_parquet_bytes_per_file:
            raise ArtifactCapExceeded(
                f"{path.name} has {size} bytes, over the cap of {settings.max_parquet_bytes_per_file}"
            )
    if total > settings.max_total_parquet_bytes_per_range:
        raise ArtifactCapExceeded(
            f"{total} Parquet bytes exceed the cap of {settings.max_total_parquet_bytes_per_range} per range"
        )


def check_coverage(p: CryoIngestTask, files: list[Path]) -> int:
    """Verify the files cover ``[range_start, range_end)`` exactly; return the row count.

    File names must tile the range without gap or overlap. blocks: every block number exactly
    once. Other datasets: every ``block_number`` inside the range. Raises ``CoverageError``
    (retryable) on a shortfall, ``ArtifactInvalid`` on foreign files.
    """
    if not files:
        raise CoverageError(f"no Parquet output for [{p.range_start}, {p.range_end})")
    spans = []
    for path in files:
        m = _FILE_RANGE.match(path.name)
        if m is None or m["ds"] != p.cryo_dataset_name:
            raise ArtifactInvalid(f"unexpected output file {path.name}", path=path.name)
        spans.append((int(m["a"]), int(m["b"]) + 1))
    cursor = p.range_start
    for a, b in sorted(spans):
        if a != cursor:
            kind = "gap" if a > cursor else "overlap"
            raise CoverageError(f"output files leave a {kind} at block {min(a, cursor)}")
        cursor = b
    if cursor != p.range_end:
        raise CoverageError(f"output files end at block {cursor}, the range at {p.range_end}")
    rows = 0
    blocks: list[pa.ChunkedArray] = []
    for path in files:
        if "block_number" not in pq.read_schema(path).names:
            if p.cryo_dataset_name == "blocks":
                raise ArtifactInvalid(
                    "blocks output lacks block_number: coverage cannot be checked"
                )
            rows += pq.read_metadata(path).num_rows
            continue
        column = pq.read_table(path, columns=["block_number"]).column("block_number")
        rows += len(column)
        if len(column):
            lo, hi = pc.min_max(column).values()
            if lo.as_py() < p.range_start or hi.as_py() >= p.range_end:
                raise CoverageError(
                    f"{path.name} holds blocks outside [{p.range_start}, {p.range_end})"
                )
        blocks.append(column)
    if p.cryo_dataset_name == "blocks":
        expected = p.range_end - p.range_start
        distinct = len(
            pc.unique(pa.chunked_array([c for b in blocks for c in b.chunks], type=pa.uint32()))
        )
        if rows != expected or distinct != expected:
            raise CoverageError(
                f"blocks output has {rows} rows / {distinct} distinct blocks, expected {expected}"
            )
    return rows


def check_log_receipts(p: CryoIngestTask, rpc: JsonRpc, rows: int) -> None:
    """Compare a logs range's row count with receipts (``eth_getBlockReceipts``): a node can
    answer ``eth_getLogs`` without some logs. A mismatch is a ``CoverageError`` (retryable)."""
    expected = rpc.log_count(p.range_start, p.range_end)
    if rows != expected:
        raise CoverageError(
            f"logs output has {rows} rows, receipts of [{p.range_start}, {p.range_end}) hold {expected}"
        )


# --- the operator --------------------------------------------------------------------------


@dataclass(frozen=True)
class IngestResult:
    committed: CommittedVersion
    mode: Mode
    rows: int
    seconds: Mapping[str, float]

    def outputs(self) -> dict[str, Any]:
        return {**self.committed.outputs(), "mode": self.mode}


def attempt_staging_dir(settings: Settings, lease: Lease) -> Path:
    """``{staging_dir}/{task_id}/{attempt}/`` (mode 0700)."""
    return settings.resolved_staging_dir() / str(lease.task_id) / str(lease.attempt)


def extract_and_stage(
    settings: Settings,
    store: ObjectStore,
    lease: Lease,
    *,
    org_id: str | None = None,
    heartbeat: Callable[[], None] | None = None,
    check: Callable[[], None] | None = None,
    environ: Mapping[str, str] | None = None,
    timings: dict[str, float] | None = None,
    state: StateConnect | None = None,
) -> tuple[StagedOutput, Mode]:
    """Everything before the commit: extract, verify, upload to the staging prefix.

    ``heartbeat`` runs every ``settings.heartbeat_seconds`` meanwhile; if it raises
    ``StaleAttempt`` this raises ``StaleAttempt`` and nothing is staged further. Under a
    caller that already heartbeats (the worker), pass its ``check`` instead: it is called
    between phases and raises ``StaleAttempt`` once the lease is lost. The local staging dir
    is removed on success and left for ``gc_staging`` on failure. With ``state``, a real
    extraction first takes a slot of its pool (``rpc_limits``: the pool's concurrency and
    request-rate limits, which hold across runs and machines); without it, none is taken.
    """
    timings = {} if timings is None else timings
    p = CryoIngestTask.parse(lease.payload, org_id=org_id or settings.org_id)
    mode, _url = choose_mode(settings, p.rpc_pool, environ)
    out_dir = attempt_staging_dir(settings, lease)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    out_dir.mkdir(mode=0o700)
    fields = {
        "task_id": str(lease.task_id),
        "attempt": lease.attempt,
        "range": f"{p.range_start}:{p.range_end}",
    }
    log.info(
        "cryo_ingest extracting", extra={**fields, "dataset": p.cryo_dataset_name, "mode": mode}
    )
    hb = LeaseHeartbeat(heartbeat or (lambda: None), settings.heartbeat_seconds, lease)
    with hb.running() if heartbeat else nullcontext(hb):
        checkpoint = check or hb.check
        t0 = time.perf_counter()
        with profile.phase("pool"):
            pool = open_pool(p, settings, environ) if mode == "real" else None
        bloom = (
            settings.verify_logs_bloom
            and pool is not None
            and cryo_logcheck.applies(p.cryo_name, p.cryo_options)
        )
        headers = _Prefetch()
        if pool is not None:
            limits = pool_limits(p.rpc_pool, environ) if p.rpc_pool else PoolLimits()
            slot: AbstractContextManager[int | None] = (
                extraction_slot(state, p.rpc_pool, lease, limits, check=checkpoint)
                if state is not None and p.rpc_pool
                else nullcontext(None)
            )
            with slot:
                extract_real(
                    p,
                    pool,
                    out_dir,
                    settings,
                    limits.share_per_extraction,
                    on_checked=(
                        (lambda usable: headers.start(usable, p.range_start, p.range_end))
                        if bloom
                        else None
                    ),
                )
        else:
            with profile.phase("cryo"):
                extract_fake(
                    chain_id=p.chain_id,
                    cryo_dataset_name=p.cryo_name,
                    range_start=p.range_start,
                    range_end=p.range_end,
                    chunk_size=p.chunk_size,
                    out_dir=out_dir,
                )
        checkpoint()
        t1 = time.perf_counter()
        with profile.phase("checks"):
            files = collect_files(out_dir)
            check_caps(files, settings)
            rows = check_coverage(p, files)
        if bloom:
            assert pool is not None
            with profile.phase("bloom"):
                cryo_logcheck.check_logs_bloom(
                    pool, p.range_start, p.range_end, files, headers=headers.result()
                )
        if pool is not None and p.cryo_dataset_name == "logs" and settings.verify_log_receipts:
            with profile.phase("receipts"):
                check_log_receipts(p, pool, rows)
        checkpoint()
        t2 = time.perf_counter()
        with profile.phase("stage"):
            schema, staged_files = stage_parquet_files(store, lease.task_id, lease.attempt, files)
        checkpoint()
        t3 = time.perf_counter()
    timings.update(extract=t1 - t0, verify=t2 - t1, stage=t3 - t2)
    shutil.rmtree(out_dir, ignore_errors=True)
    staged = StagedOutput(
        task_id=lease.task_id,
        attempt=lease.attempt,
        org_id=org_id or settings.org_id,
        dataset_uuid=p.dataset_id,
        dataset_key=p.dataset_key,
        chain_id=p.chain_id,
        range_start=p.range_start,
        range_end=p.range_end,
        config_hash=p.version_config_hash,
        schema=schema,
        files=staged_files,
        fake=mode == "fake",
    )
    return staged, mode


def run_cryo_ingest(
    settings: Settings,
    store: ObjectStore,
    lease: Lease,
    *,
    state: StateConnect,
    heartbeat: Callable[[], None] | None = None,
    org_id: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> IngestResult:
    """Extract, verify, stage and commit one range; return the committed version.

    ``state`` opens a state-database connection (autocommit; the commit uses its own
    transaction). ``heartbeat`` defaults to extending ``lease`` through ``state``. Raises
    FatalError / RetryableError subclasses for the caller to record with
    ``complete_failure``, or ``StaleAttempt`` when the lease was lost (nothing committed).
    """
    timings: dict[str, float] = {}
    beat = heartbeat or lease_heartbeat(settings, lease, state)
    staged, mode = extract_and_stage(
        settings,
        store,
        lease,
        org_id=org_id,
        heartbeat=beat,
        environ=environ,
        timings=timings,
        state=state,
    )
    t0 = time.perf_counter()
    with profile.phase("commit"), state() as conn:
        committed = commit_staged(conn, store, staged, lease)
    timings["commit"] = time.perf_counter() - t0
    rows = committed.record.row_count
    log.info(
        "cryo_ingest committed",
        extra={"task_id": str(lease.task_id), "attempt": lease.attempt, "rows": rows, **timings},
    )
    return IngestResult(committed, mode, rows, timings)


def commit_staged(
    conn: Connection[Any], store: ObjectStore, staged: StagedOutput, lease: Lease
) -> CommittedVersion:
    """Commit a staged range for its attempt (fence, publish, register, finish the task); a
    range a chain_sync job planned announces its version (alerts route it by job). The one
    commit both entry points use."""
    job_name = RangeLabel.of(lease.payload).job_name
    return commit_version(
        conn, store, staged, lease=lease, announce=job_name is not None, job_name=job_name
    )


def cryo_ingest_operator(ctx: OperatorContext) -> Completion:
    """Worker entry point: stage under the worker's heartbeat, commit in its completion tx."""

    rt = ctx.runtime
    store = rt.store
    # staged through the attempt's scoped credentials when the Credential Broker is on
    staged, mode = extract_and_stage(
        rt.settings, ctx.staging_store, ctx.lease, check=ctx.check_lease, state=rt.state
    )

    def commit(conn: Connection[Any]) -> dict[str, Any]:
        return {**commit_staged(conn, store, staged, ctx.lease).outputs(), "mode": mode}

    return Completion(outputs={}, commit=commit)
