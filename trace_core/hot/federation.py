"""Federation's boundary: what a read of one hot dataset unions, every block counted once.

Readers (``federated_sources``) take as cold, per block, the newest version covering it,
``boundary`` = the end of the highest one, and hot rows with ``block_number >= boundary`` plus
any hot rows in ranges no cold version covers. Per org: only the org's versions and hot rows.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from psycopg import Connection

from trace_core.datasets.cryo_schemas import CRYO_COLUMNS
from trace_core.datasets.duckdb_sql import parquet_select
from trace_core.datasets.manifest import load_manifest
from trace_core.datasets.registry import (
    VersionRecord,
    VisiblePart,
    missing_ranges,
    versions_for_stream,
    visible_parts,
)
from trace_core.db.connection import Databases, connect
from trace_core.hot.follower import org_session
from trace_core.hot.tables import HOT_SCHEMA, check_dataset, hot_rows_predicate, hot_table
from trace_core.settings import DEFAULT_ORG_ID, Settings
from trace_core.storage.base import ObjectStore


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
    store = store or default_store(settings)
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


def default_store(settings: Settings) -> ObjectStore:
    """The settings' object store, for callers that pass none."""
    from trace_core.storage.factory import make_object_store

    return make_object_store(settings)
