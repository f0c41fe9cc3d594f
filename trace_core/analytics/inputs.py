"""Analytics inputs: the committed versions of a chain_sync stream, as DuckDB-readable files.

Only registered versions are read (``registry.versions_for_stream``: per block the newest
version wins); a version that serves part of its range is read with that block filter, the
same rule the Query Service applies (``datasets.duckdb_sql.parquet_select``).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import Connection

from trace_core.datasets.duckdb_sql import parquet_select
from trace_core.datasets.manifest import load_manifest
from trace_core.datasets.registry import VersionRecord, gaps, versions_for_stream, visible_parts
from trace_core.errors import DatasetNotSynced
from trace_core.storage.base import ObjectStore


@dataclass(frozen=True)
class InputPart:
    """Blocks ``[start, end)`` of a stream, served by one committed version's files."""

    dataset_version: uuid.UUID
    start: int
    end: int
    whole: bool
    uris: tuple[str, ...]
    rows: int
    fake: bool = False


@dataclass(frozen=True)
class StreamInput:
    """What an analytics computation reads of one stream over ``[start, end)``."""

    job: str
    stream: str
    dataset_key: str
    chain_id: int
    start: int
    end: int
    parts: tuple[InputPart, ...]

    def select_sql(self) -> str:
        """DuckDB ``SELECT *`` of every row of ``[start, end)``, each block from one version."""
        if not self.parts:
            raise DatasetNotSynced(
                f"job {self.job!r}: stream {self.stream!r} has no committed version in "
                f"[{self.start}, {self.end})",
                job=self.job,
                stream=self.stream,
            )
        selects = []
        for p in self.parts:
            inside = self.start <= p.start and p.end <= self.end
            if p.whole and inside:
                selects.append(parquet_select(p.uris))
            else:
                selects.append(
                    parquet_select(p.uris, max(p.start, self.start), min(p.end, self.end))
                )
        return " UNION ALL ".join(selects)

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.parts)

    @property
    def fake(self) -> bool:
        """True when any part is made-up data (outputs derived from it are marked fake)."""
        return any(p.fake for p in self.parts)

    def fingerprint(self) -> str:
        """Hash of the versions and bounds read: equal inputs give equal output versions."""
        return parts_fingerprint(
            self.start, self.end, [(p.dataset_version, p.start, p.end) for p in self.parts]
        )


def parts_fingerprint(start: int, end: int, parts: Sequence[tuple[uuid.UUID, int, int]]) -> str:
    """16 hex identifying which version serves which blocks of ``[start, end)``."""
    text = ";".join(f"{v}:{a}:{b}" for v, a, b in parts)
    return hashlib.sha256(f"{start}:{end}|{text}".encode()).hexdigest()[:16]


def registry_fingerprint(records: Sequence[VersionRecord], start: int, end: int) -> str:
    """``StreamInput.fingerprint`` of ``[start, end)`` from registry rows alone (no manifest
    reads), for planners that must stay cheap."""
    return parts_fingerprint(
        start,
        end,
        [
            (p.record.dataset_version, p.start, p.end)
            for p in visible_parts(list(records))
            if p.end > start and p.start < end
        ],
    )


def committed_versions(
    conn: Connection[Any], org_id: str, chain_id: int, dataset_key: str
) -> list[VersionRecord]:
    """The versions readers see for a stream (newest per block), sorted by range."""
    return versions_for_stream(conn, org_id, chain_id, dataset_key)


def covered_end(records: Sequence[VersionRecord], start: int = 0) -> int:
    """End of the contiguous committed span from ``start`` (``start`` when nothing covers it)."""
    missing = gaps([(r.range_start, r.range_end) for r in records], start, 2**62)
    return missing[0][0] if missing else start


def stream_input(
    conn: Connection[Any],
    store: ObjectStore,
    *,
    org_id: str,
    job: str,
    stream: str,
    chain_id: int,
    start: int,
    end: int,
    dataset_key: str | None = None,
) -> StreamInput:
    """The committed files of ``stream`` over ``[start, end)``.

    Raises ``DatasetNotSynced`` naming the job, stream and missing ranges when any block of
    the range has no committed version; ``ManifestInvalid``/``ObjectNotFound`` for a broken one.
    """
    key = dataset_key or stream
    records = committed_versions(conn, org_id, chain_id, key)
    missing = gaps([(r.range_start, r.range_end) for r in records], start, end)
    if missing:
        shown = ", ".join(f"[{a}, {b})" for a, b in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DatasetNotSynced(
            f"job {job!r}: stream {stream!r} is not synced for blocks {shown}{more}; "
            f"sync it first (trace-lite status --job {job})",
            job=job,
            stream=stream,
            missing=missing,
        )
    parts: list[InputPart] = []
    manifests: dict[uuid.UUID, tuple[str, ...]] = {}
    for part in visible_parts(records):
        if part.end <= start or part.start >= end:
            continue
        rec = part.record
        if rec.dataset_version not in manifests:
            manifest = load_manifest(store, rec.manifest_key, prefix=rec.storage_prefix)
            manifests[rec.dataset_version] = tuple(
                store.duckdb_uri(k) for k in manifest.parquet_keys
            )
        parts.append(
            InputPart(
                rec.dataset_version,
                part.start,
                part.end,
                part.whole,
                manifests[rec.dataset_version],
                rec.row_count,
                rec.fake,
            )
        )
    return StreamInput(job, stream, key, chain_id, start, end, tuple(parts))
