"""Compaction: finalized hot ranges become cold dataset versions.

``compact_once`` cuts the final part of the hot span into grid-aligned ranges ``[a, b)``
(``b <= head - finality_depth + 1``), writes each dataset's rows as Parquet with cryo's exact
columns, and commits each as a dataset version through the datasets commit protocol (staged
objects moved under the version prefix, manifest last, registry row in one state
transaction). Version ids are deterministic (``config_hash = hot_compact.{dataset}:v1``), so a
re-run registers nothing new. Each compacted range is recorded in ``state.partition_versions``
in the same transaction. Hot rows are deleted only afterwards (``delete_compacted``), and only
for ranges the current cold selection covers.

What compaction may delete afterwards is ``hot.prune``'s; what a federated read takes from
cold and hot is ``hot.federation``'s.

Everything runs per (org, chain): an org's hot rows become versions of that org's datasets,
under a lock of its own, and only its rows are read and deleted (``org_id``, default the
settings' org; the connections bypass row-level security, so every query names the org).
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from psycopg import Connection

from trace_core.datasets import ids
from trace_core.datasets.commit import (
    StagedOutput,
    commit_version,
    stage_parquet_files,
)
from trace_core.datasets.registry import (
    VersionRecord,
    get_version,
)
from trace_core.db.connection import Databases, connect
from trace_core.db.queries import q
from trace_core.errors import CoverageError
from trace_core.hot.federation import default_store, hot_boundary
from trace_core.hot.finality import final_end, finality_depth, plan_ranges
from trace_core.hot.follower import acting_org, load_cursor, org_session
from trace_core.hot.prune import delete_compacted_on
from trace_core.hot.tables import (
    HOT_DATASETS,
    check_dataset,
    count_rows,
    read_range,
)
from trace_core.runtime import Runtime
from trace_core.settings import Settings
from trace_core.storage.base import ObjectStore

log = logging.getLogger(__name__)

CONFIG_VERSION = "v1"


def compact_config_hash(dataset_key: str) -> str:
    """``hot_compact.{dataset}:v1``: the config of every version compaction writes."""
    check_dataset(dataset_key)
    return f"hot_compact.{dataset_key}:{CONFIG_VERSION}"


def parquet_name(chain_id: int, dataset_key: str, range_start: int, range_end: int) -> str:
    """cryo's file naming: ``network_{chain}__{dataset}__{start:08}_to_{end_inclusive:08}``."""
    return f"network_{chain_id}__{dataset_key}__{range_start:08}_to_{range_end - 1:08}.parquet"


# --- compaction --------------------------------------------------------------------------


@dataclass(frozen=True)
class CompactedRange:
    dataset_key: str
    range_start: int
    range_end: int
    dataset_version: uuid.UUID
    row_count: int
    newly_registered: bool


@dataclass
class CompactResult:
    """``committed``: versions this call registered or found registered; ``deleted_rows``:
    hot rows removed per dataset; ``skipped``: another compaction held the (org, chain) lock."""

    chain_id: int
    committed: list[CompactedRange] = field(default_factory=list)
    deleted_rows: dict[str, int] = field(default_factory=dict)
    final_end: int | None = None
    skipped: bool = False
    org_id: str | None = None


def _lock_key(org_id: str, chain_id: int) -> int:
    digest = hashlib.sha256(f"trace.hot_compact:{org_id}:{chain_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def compact_once(
    settings: Settings,
    dbs: Databases,
    chain_id: int,
    *,
    store: ObjectStore | None = None,
    datasets: tuple[str, ...] = HOT_DATASETS,
    range_size: int | None = None,
    finality_depth_override: int | None = None,
    delete_hot: bool = False,
    max_ranges: int = 10,
    org_id: str | None = None,
) -> CompactResult:
    """Commit up to ``max_ranges`` final hot ranges per dataset of org ``org_id`` (default
    ``settings.org_id``) as cold versions of the org's datasets.

    Ranges start at ``max(hot_boundary, follower's first block)`` and align to multiples of
    ``range_size`` (default ``settings.hot_compact_range_size``); only complete ranges that
    end at or before ``final_end(cursor, finality_depth)`` are taken. With ``delete_hot``,
    ``delete_compacted`` runs after the commits. Raises ``CoverageError`` if the hot blocks
    of a final range are incomplete (the follower's no-gap invariant is broken).
    """
    for ds in datasets:
        check_dataset(ds)
    size = range_size or settings.hot_compact_range_size
    store = store or default_store(settings)
    org = acting_org(settings, org_id)
    result = CompactResult(chain_id, org_id=org)
    lock = {"key": _lock_key(org, chain_id)}
    with (
        connect(dbs.state_url, autocommit=True, **org_session(settings, org)) as state,
        connect(dbs.data_url, autocommit=True, **org_session(settings, org)) as data,
    ):
        row = state.execute(q("hot", "try_advisory_lock"), lock).fetchone()
        if not (row and row[0]):
            result.skipped = True
            return result
        try:
            cursor = load_cursor(state, org, chain_id)
            if cursor is None:
                return result
            depth = finality_depth(
                settings, chain_id, state_conn=state, override=finality_depth_override, org_id=org
            )
            end = final_end(cursor.number, depth)
            result.final_end = end
            for ds in datasets:
                boundary = hot_boundary(state, chain_id, ds, org_id=org)
                start = max(boundary, cursor.first_block)
                for a, b in plan_ranges(start, end, size, limit=max_ranges):
                    result.committed.append(
                        _compact_range(settings, state, data, store, org, chain_id, ds, a, b)
                    )
            if delete_hot:
                result.deleted_rows = delete_compacted_on(state, data, org, chain_id, datasets)
        finally:
            state.execute(q("hot", "release_advisory_lock"), lock)
    return result


def compact_range(
    settings: Settings,
    dbs: Databases,
    chain_id: int,
    dataset_key: str,
    range_start: int,
    range_end: int,
    *,
    store: ObjectStore | None = None,
    org_id: str | None = None,
) -> CompactedRange:
    """Commit the org's hot ``[range_start, range_end)`` of one dataset as a cold version of
    the org's dataset (idempotent; ``org_id`` default ``settings.org_id``).

    The caller vouches that the range is final; a registered version is returned as is
    (``newly_registered=False``) without reading hot rows. Raises ``CoverageError`` when the
    hot blocks of the range are incomplete.
    """
    check_dataset(dataset_key)
    store = store or default_store(settings)
    org = acting_org(settings, org_id)
    with (
        connect(dbs.state_url, autocommit=True, **org_session(settings, org)) as state,
        connect(dbs.data_url, autocommit=True, **org_session(settings, org)) as data,
    ):
        return _compact_range(
            settings, state, data, store, org, chain_id, dataset_key, range_start, range_end
        )


def _compact_range(
    settings: Settings,
    state: Connection[Any],
    data: Connection[Any],
    store: ObjectStore,
    org_id: str,
    chain_id: int,
    dataset_key: str,
    a: int,
    b: int,
) -> CompactedRange:
    dataset_uuid = ids.dataset_uuid(org_id, chain_id, dataset_key)
    config = compact_config_hash(dataset_key)
    version = ids.dataset_version(dataset_uuid, config, chain_id, a, b)
    existing = get_version(state, version)
    if existing is not None:
        _record_partition(state, existing)
        return CompactedRange(dataset_key, a, b, version, existing.row_count, False)
    blocks = count_rows(data, org_id, chain_id, "blocks", a, b)
    if dataset_key == "blocks" and blocks != b - a:
        raise CoverageError(
            f"chain {chain_id}: hot blocks [{a}, {b}) hold {blocks} of {b - a} blocks",
            chain_id=chain_id,
            range_start=a,
            range_end=b,
        )
    staging_task = uuid.uuid4()  # staging is throwaway; the version id is what is deterministic
    with tempfile.TemporaryDirectory(prefix="hot_compact_") as tmp:
        path = Path(tmp) / parquet_name(chain_id, dataset_key, a, b)
        with data.transaction():
            table = read_range(data, org_id, chain_id, dataset_key, a, b)
        pq.write_table(table, path, compression="lz4")
        schema, files = stage_parquet_files(store, staging_task, 1, [path])
    staged = StagedOutput(
        task_id=staging_task,
        attempt=1,
        org_id=org_id,
        dataset_uuid=dataset_uuid,
        dataset_key=dataset_key,
        chain_id=chain_id,
        range_start=a,
        range_end=b,
        config_hash=config,
        schema=schema,
        files=files,
    )
    # no task: lock, publish unless registered, register, record the partition, announce the
    # version (alerts reading this stream evaluate hot data going cold too)
    committed = commit_version(
        state,
        store,
        staged,
        announce=True,
        on_registered=lambda conn, c: _record_partition(conn, c.record),
    )
    log.info(
        "hot range compacted",
        extra={
            "org_id": org_id,
            "chain_id": chain_id,
            "dataset": dataset_key,
            "range": f"{a}:{b}",
            "rows": committed.record.row_count,
            "dataset_version": str(version),
        },
    )
    return CompactedRange(
        dataset_key, a, b, version, committed.record.row_count, committed.newly_registered
    )


def _record_partition(state: Connection[Any], rec: VersionRecord) -> None:
    state.execute(
        q("hot", "insert_partition_version"),
        {
            "org_id": rec.org_id,
            "dataset_uuid": rec.dataset_uuid,
            "dataset_version": rec.dataset_version,
            "partition_key": f"{rec.range_start}-{rec.range_end}",
            "chain_id": rec.chain_id,
            "dataset_key": rec.dataset_key,
            "range_start": rec.range_start,
            "range_end": rec.range_end,
            "row_count": rec.row_count,
        },
    )


def compact_chain(
    rt: Runtime,
    chain_id: int,
    *,
    datasets: tuple[str, ...] = HOT_DATASETS,
    range_size: int | None = None,
    finality_depth: int | None = None,
    delete_hot: bool = False,
    max_ranges: int = 10,
    org_id: str | None = None,
) -> CompactResult:
    """``compact_once`` with the runtime's settings, databases and object store, for org
    ``org_id`` (default the runtime's)."""
    return compact_once(
        rt.settings,
        rt.dbs,
        chain_id,
        store=rt.store,
        datasets=datasets,
        range_size=range_size,
        finality_depth_override=finality_depth,
        delete_hot=delete_hot,
        max_ranges=max_ranges,
        org_id=org_id,
    )
