"""Compaction: finalized hot ranges become cold dataset versions; federation's boundary.

``compact_once`` cuts the final part of the hot span into grid-aligned ranges ``[a, b)``
(``b <= head - finality_depth + 1``), writes each dataset's rows as Parquet with cryo's exact
columns, and commits each as a dataset version through the datasets commit protocol (staged
objects moved under the version prefix, manifest last, registry row in one state
transaction). Version ids are deterministic (``config_hash = hot_compact.{dataset}:v1``), so a
re-run registers nothing new. Each compacted range is recorded in ``state.partition_versions``
in the same transaction. Hot rows are deleted only afterwards (``delete_compacted``), and only
for ranges the current cold selection covers.

Readers (``federated_sources``) take as cold, per block, the newest version covering it,
``boundary`` = the end of the highest one, and hot rows with ``block_number >= boundary`` plus
any hot rows in ranges no cold version covers: every block counted exactly once.

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
from psycopg import Connection, sql

from trace_core.datasets import ids
from trace_core.datasets.commit import (
    StagedOutput,
    commit_version,
    stage_parquet_files,
)
from trace_core.datasets.cryo_schemas import CRYO_COLUMNS
from trace_core.datasets.duckdb_sql import parquet_select
from trace_core.datasets.manifest import load_manifest
from trace_core.datasets.registry import (
    VersionRecord,
    VisiblePart,
    get_version,
    missing_ranges,
    versions_for_stream,
    visible_parts,
)
from trace_core.db.connection import Databases, connect
from trace_core.db.queries import q
from trace_core.errors import CoverageError
from trace_core.hot.finality import final_end, finality_depth, plan_ranges
from trace_core.hot.follower import load_cursor, org_session
from trace_core.hot.tables import (
    HOT_DATASETS,
    HOT_SCHEMA,
    RANGE_FILTER,
    check_dataset,
    count_rows,
    hot_rows_predicate,
    hot_table,
    read_range,
)
from trace_core.runtime import Runtime
from trace_core.settings import DEFAULT_ORG_ID, Settings
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


# --- boundary and federation -------------------------------------------------------------


def cold_selection(
    conn: Connection[Any], chain_id: int, dataset_key: str, *, org_id: str = DEFAULT_ORG_ID
) -> list[VersionRecord]:
    """The cold versions readers use: those serving some block (``registry.visible_parts``)."""
    return versions_for_stream(conn, org_id, chain_id, dataset_key)


def hot_boundary(
    conn: Connection[Any], chain_id: int, dataset_key: str, *, org_id: str = DEFAULT_ORG_ID
) -> int:
    """First block above every cold version of the dataset (0 when there is none).

    Hot rows with ``block_number >= hot_boundary`` are never covered by cold versions. When
    the cold versions have gaps below it, ``federated_sources`` lists them (``hot_gaps``).
    ``conn`` is a state-database connection.
    """
    selection = cold_selection(conn, chain_id, dataset_key, org_id=org_id)
    return max((v.range_end for v in selection), default=0)


@dataclass(frozen=True)
class FederatedSources:
    """What a federated read of one hot dataset unions, with nothing counted twice.

    ``cold_version_files``: DuckDB-readable URIs (local paths or s3://) of the files of the
    selected cold versions that serve their whole range; ``cold_clipped``: files of versions
    that serve only ``[start, end)`` (a newer version serves the rest), read with that filter
    (``duckdb_cold_select`` does both); ``hot_table``: ``data.hot_{dataset}`` in the data database;
    ``boundary``: hot rows with ``block_number >= boundary`` belong to the result, and so do
    hot rows inside ``hot_gaps`` (ranges below the boundary no cold version covers, usually
    none). Always filter the hot table on ``org_id`` and ``chain_id`` (``hot_predicate``).
    """

    cold_version_files: list[str]
    hot_table: str
    boundary: int
    chain_id: int
    dataset_key: str
    hot_gaps: list[tuple[int, int]] = field(default_factory=list)
    cold_versions: list[VersionRecord] = field(default_factory=list)
    cold_clipped: list[tuple[list[str], int, int]] = field(default_factory=list)
    org_id: str | None = None

    def duckdb_cold_select(self) -> str | None:
        """DuckDB SELECT of every cold row, each block once; None without cold files."""
        parts = [parquet_select(self.cold_version_files)] if self.cold_version_files else []
        parts += [parquet_select(uris, a, b) for uris, a, b in self.cold_clipped]
        return " UNION ALL ".join(parts) or None

    @property
    def columns(self) -> list[str]:
        """cryo's column names, in its Parquet order."""
        return [c.name for c in CRYO_COLUMNS[self.dataset_key]]

    def hot_predicate(self) -> str:
        """SQL condition (Postgres or DuckDB) selecting exactly the hot rows to union."""
        return hot_rows_predicate(self.boundary, self.hot_gaps, self.chain_id, self.org_id)

    def duckdb_hot_select(self, catalog: str) -> str:
        """DuckDB SELECT over an attached Postgres catalog, cast to cryo's Parquet types."""
        schema, _, table = self.hot_table.partition(".")
        cols = ", ".join(
            f'CAST("{c.name}" AS {c.duckdb}) AS "{c.name}"' for c in CRYO_COLUMNS[self.dataset_key]
        )
        return f'SELECT {cols} FROM "{catalog}"."{schema}"."{table}" WHERE {self.hot_predicate()}'


def federated_sources(
    settings: Settings,
    dbs: Databases,
    chain_id: int,
    dataset_key: str,
    *,
    store: ObjectStore | None = None,
    org_id: str | None = None,
) -> FederatedSources:
    """Cold files, hot table and boundary for a federated read of ``dataset_key`` on a chain,
    of org ``org_id`` (default ``settings.org_id``).

    Manifests are read from the store and validated against the version prefix. Raises
    ``ManifestInvalid`` / ``ObjectNotFound`` for a broken committed version.
    """
    check_dataset(dataset_key)
    store = store or _store(settings)
    org = org_id or settings.org_id
    with connect(dbs.state_url, **org_session(settings, org)) as conn:
        selection = cold_selection(conn, chain_id, dataset_key, org_id=org)
    files: list[str] = []
    clipped: list[tuple[list[str], int, int]] = []
    parts: dict[uuid.UUID, list[VisiblePart]] = {}
    for part in visible_parts(selection):
        parts.setdefault(part.record.dataset_version, []).append(part)
    for rec in selection:
        manifest = load_manifest(store, rec.manifest_key, prefix=rec.storage_prefix)
        uris = [store.duckdb_uri(key) for key in manifest.parquet_keys]
        visible = parts.get(rec.dataset_version, [])
        if len(visible) == 1 and visible[0].whole:
            files.extend(uris)
        else:
            clipped += [(uris, p.start, p.end) for p in visible]
    boundary = max((v.range_end for v in selection), default=0)
    return FederatedSources(
        cold_version_files=files,
        hot_table=f"{HOT_SCHEMA}.{hot_table(dataset_key)}",
        boundary=boundary,
        chain_id=chain_id,
        dataset_key=dataset_key,
        hot_gaps=missing_ranges(selection, 0, boundary),
        cold_versions=selection,
        cold_clipped=clipped,
        org_id=str(uuid.UUID(str(org))),
    )


def _store(settings: Settings) -> ObjectStore:
    from trace_core.storage.factory import make_object_store

    return make_object_store(settings)


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
    store = store or _store(settings)
    org = _org(settings, org_id)
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
                result.deleted_rows = _delete_compacted(state, data, org, chain_id, datasets)
        finally:
            state.execute(q("hot", "release_advisory_lock"), lock)
    return result


def _org(settings: Settings, org_id: str | None) -> str:
    return str(uuid.UUID(str(org_id or settings.org_id)))


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
    store = store or _store(settings)
    org = _org(settings, org_id)
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


def delete_compacted(
    settings: Settings,
    dbs: Databases,
    chain_id: int,
    *,
    datasets: tuple[str, ...] = HOT_DATASETS,
    org_id: str | None = None,
) -> dict[str, int]:
    """Delete the org's hot rows of its compacted ranges that its cold selection now serves
    (``org_id`` default ``settings.org_id``).

    A range's rows go only when its range is fully covered by the registry's current cold
    selection and lies below ``hot_boundary``; it is then marked ``hot_deleted_at``. A crash
    between the delete and the mark re-deletes nothing next time. Returns rows deleted per
    dataset.
    """
    for ds in datasets:
        check_dataset(ds)
    org = _org(settings, org_id)
    with (
        connect(dbs.state_url, autocommit=True, **org_session(settings, org)) as state,
        connect(dbs.data_url, autocommit=True, **org_session(settings, org)) as data,
    ):
        return _delete_compacted(state, data, org, chain_id, datasets)


def _delete_compacted(
    state: Connection[Any],
    data: Connection[Any],
    org_id: str,
    chain_id: int,
    datasets: tuple[str, ...],
) -> dict[str, int]:
    deleted: dict[str, int] = {}
    cursor = load_cursor(state, org_id, chain_id)
    for ds in datasets:
        selection = cold_selection(state, chain_id, ds, org_id=org_id)
        boundary = max((v.range_end for v in selection), default=0)
        key = {"org_id": uuid.UUID(org_id), "chain_id": chain_id, "dataset_key": ds}
        pending = state.execute(q("hot", "pending_hot_deletes"), key).fetchall()
        total = 0
        for _version, a, b in pending:
            if b > boundary or missing_ranges(selection, a, b):
                continue
            if cursor is not None and b > cursor.number:
                continue  # the follower's tip always stays hot
            total += _delete_range(data, org_id, chain_id, ds, a, b)
            state.execute(q("hot", "mark_hot_deleted"), {**key, "range_start": a, "range_end": b})
        deleted[ds] = total
    return deleted


def prune_served(
    settings: Settings,
    dbs: Databases,
    chain_id: int,
    *,
    datasets: tuple[str, ...] = HOT_DATASETS,
    finality_depth_override: int | None = None,
    org_id: str | None = None,
) -> dict[str, int]:
    """Delete the org's hot rows that its cold versions serve, for chains it does not compact
    (follow_head: chain_sync's own ranges become cold behind the tip); ``org_id`` default
    ``settings.org_id``.

    A hot row goes when its block is below the dataset's ``hot_boundary``, inside a range the
    cold selection covers (rows in ``hot_gaps`` stay: readers take them from hot), final
    (below ``cursor - finality_depth``) and below the follower's cursor. Queries are unchanged
    by construction: readers never take hot rows from where a cold version serves the block.
    One DELETE per dataset; returns rows deleted per dataset.
    """
    for ds in datasets:
        check_dataset(ds)
    deleted: dict[str, int] = {}
    org = _org(settings, org_id)
    with (
        connect(dbs.state_url, autocommit=True, **org_session(settings, org)) as state,
        connect(dbs.data_url, autocommit=True, **org_session(settings, org)) as data,
    ):
        cursor = load_cursor(state, org, chain_id)
        if cursor is None:
            return {ds: 0 for ds in datasets}
        depth = finality_depth(
            settings, chain_id, state_conn=state, override=finality_depth_override, org_id=org
        )
        limit = min(final_end(cursor.number, depth), cursor.number)
        for ds in datasets:
            selection = cold_selection(state, chain_id, ds, org_id=org)
            boundary = min(max((v.range_end for v in selection), default=0), limit)
            keep = missing_ranges(selection, 0, boundary)
            if boundary <= 0:
                deleted[ds] = 0
                continue
            condition = sql.SQL(" AND ").join(
                [sql.SQL("org_id = %s"), sql.SQL("chain_id = %s"), sql.SQL("block_number < %s")]
                + [sql.SQL("NOT (block_number >= %s AND block_number < %s)") for _ in keep]
            )
            params: list[Any] = [uuid.UUID(org), chain_id, boundary]
            params += [x for a, b in keep for x in (a, b)]
            with data.transaction():
                cur = data.execute(
                    sql.SQL("DELETE FROM {}.{} WHERE ").format(
                        sql.Identifier(HOT_SCHEMA), sql.Identifier(hot_table(ds))
                    )
                    + condition,
                    params,
                )
            deleted[ds] = cur.rowcount
    return deleted


def _delete_range(
    data: Connection[Any], org_id: str, chain_id: int, dataset_key: str, a: int, b: int
) -> int:
    with data.transaction():
        cur = data.execute(
            sql.SQL("DELETE FROM {}.{} WHERE " + RANGE_FILTER).format(
                sql.Identifier(HOT_SCHEMA), sql.Identifier(hot_table(dataset_key))
            ),
            {"org_id": uuid.UUID(org_id), "chain_id": chain_id, "range_start": a, "range_end": b},
        )
    return cur.rowcount


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
