"""Compaction of committed versions: the finalized ranges of a dataset inside an aligned
window of blocks are rewritten as ONE version (cryo issue 29; issue 25 item 7).

A query pays per version it reads (a registry row, a manifest, files for DuckDB to open), so
a year of 1,000-block ranges (~104k versions per stream) made a ``count(*)`` cost seconds to
minutes. Compacting each window of ``window_blocks`` (the job's epoch: 100,000 blocks = 100
ranges) bounds a stream's versions by its data, not by how it was chunked.

The versioning invariants hold as for any commit (docs/architecture.md, Compaction):

- **Exactness.** The compacted version holds exactly the rows each block's serving version
  holds (``registry.visible_parts`` at planning time; a version that serves only part of its
  range is read with that block filter), in block order, with the inputs' Arrow schema.
- **One version per block.** The window's version is registered through the commit protocol
  (staging -> version prefix -> manifest last -> registry row, one state transaction) with
  ``created_at`` stamped under the dataset's exclusive lock, so it is newer than every input
  and older than anything registered after it (a repair committed later still wins its
  blocks). Its inputs are marked ``compacted_into`` it in the same transaction, so readers
  skip them at once; retention collects them after the grace period unless a task pins them.
- **No lost commit.** Under that exclusive lock the window's live versions are read again: if
  any was added, collected or compacted since planning, nothing is registered (``stale``) and
  the next pass plans the window again. Regular registrations take the dataset's shared lock.
- **Crash safety.** A crash before the registry row leaves an unregistered prefix (invisible;
  the retry maps to the same deterministic version id and prefix and rewrites it), or staging
  that staging GC removes.

Only windows fully covered by versions sharing one schema and base config are compacted (a
repair's ``:repair-N`` config counts as its stream's), with at least ``min_versions`` serving
versions. Verification carries over: the compacted version is verified when all its inputs
were (the oldest such time), so the incremental integrity pass does not re-verify the window.
"""

from __future__ import annotations

import logging
import tempfile
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from psycopg import Connection
from psycopg.rows import dict_row

from trace_core.datasets import ids
from trace_core.datasets.commit import (
    CommittedVersion,
    StagedOutput,
    commit_version,
    stage_parquet_files,
)
from trace_core.datasets.manifest import load_manifest
from trace_core.datasets.registry import VersionRecord, VisiblePart, visible_parts
from trace_core.db.errors import translates_db_errors
from trace_core.db.queries import q
from trace_core.errors import ArtifactInvalid, ManifestInvalid, ObjectNotFound, RetryableError
from trace_core.storage.base import ObjectStore

log = logging.getLogger(__name__)

REPAIR_SUFFIX = ":repair-"  # trace_core.integrity.repair's config suffix
DEFAULT_FILE_ROWS = 1_000_000
BATCH_ROWS = 65_536


class CompactionStale(RetryableError):
    """The window changed between planning and registering; nothing was registered."""

    code = "compaction_stale"


@dataclass(frozen=True)
class Window:
    """One window ``[start, end)`` to compact: the parts that serve it, and every live version
    overlapping it at planning time (what the registering transaction checks again)."""

    dataset_uuid: uuid.UUID
    start: int
    end: int
    parts: tuple[VisiblePart, ...]
    overlapping: frozenset[uuid.UUID]

    @property
    def inputs(self) -> list[VersionRecord]:
        """The serving versions, in block order (each once)."""
        seen: dict[uuid.UUID, VersionRecord] = {}
        for p in self.parts:
            seen.setdefault(p.record.dataset_version, p.record)
        return list(seen.values())

    @property
    def config_hash(self) -> str:
        return base_config(self.parts[0].record.config_hash)

    @property
    def fake(self) -> bool:
        return any(p.record.fake for p in self.parts)


@dataclass
class CompactionReport:
    """What one pass compacted (or, with ``dry_run``, would compact)."""

    dry_run: bool
    windows: list[Window] = field(default_factory=list)
    committed: list[CommittedVersion] = field(default_factory=list)
    stale: list[Window] = field(default_factory=list)
    failed: list[Window] = field(default_factory=list)  # an input could not be read

    @property
    def versions_replaced(self) -> int:
        skipped = self.stale + self.failed
        return sum(len(w.inputs) for w in self.windows if w not in skipped)

    def line(self) -> str:
        verb = "would compact" if self.dry_run else "compacted"
        failed = f"; {len(self.failed)} skipped (unreadable input)" if self.failed else ""
        return (
            f"{verb} {len(self.windows) - len(self.stale) - len(self.failed)} window(s) "
            f"replacing {self.versions_replaced} version(s); {len(self.stale)} stale (retried "
            f"next pass){failed}"
        )


def base_config(config_hash: str) -> str:
    """A repair's config (``...:repair-N``) counts as its stream's."""
    return config_hash.split(REPAIR_SUFFIX, 1)[0]


def plan_windows(
    records: Sequence[VersionRecord],
    window_blocks: int,
    *,
    min_versions: int = 2,
    upto: int | None = None,
) -> list[Window]:
    """Windows ``[k * window_blocks, (k + 1) * window_blocks)`` of one dataset's live versions
    worth compacting: every block served, one schema and base config, at least
    ``min_versions`` serving versions, ending at or before ``upto`` (the finalized end) when
    given. Pure."""
    if window_blocks <= 0:
        raise ValueError("window_blocks must be positive")
    by_window: dict[int, list[VisiblePart]] = defaultdict(list)
    for part in visible_parts(list(records)):
        k = part.start // window_blocks
        while k * window_blocks < part.end:  # a part across a boundary serves both windows
            lo, hi = max(part.start, k * window_blocks), min(part.end, (k + 1) * window_blocks)
            by_window[k].append(VisiblePart(part.record, lo, hi))
            k += 1
    out: list[Window] = []
    for k, parts in sorted(by_window.items()):
        start, end = k * window_blocks, (k + 1) * window_blocks
        if upto is not None and end > upto:
            continue
        covered = parts[0].start == start and parts[-1].end == end
        contiguous = all(a.end == b.start for a, b in zip(parts, parts[1:], strict=False))
        if not (covered and contiguous):
            continue
        if len({p.record.dataset_version for p in parts}) < min_versions:
            continue
        recs = [p.record for p in parts]
        if (
            len({r.schema_hash for r in recs}) > 1
            or len({base_config(r.config_hash) for r in recs}) > 1
        ):
            continue
        if any((r.range_start, r.range_end) == (start, end) for r in recs):
            continue  # compacted before (its id is taken): later repairs serve on top of it
        overlapping = frozenset(
            r.dataset_version for r in records if r.range_start < end and start < r.range_end
        )
        out.append(Window(recs[0].dataset_uuid, start, end, tuple(parts), overlapping))
    return out


# --- acting ------------------------------------------------------------------------------


def live_versions(conn: Connection[Any], dataset_uuid: uuid.UUID) -> list[VersionRecord]:
    """The dataset's versions readers resolve (not collected, not compacted)."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            q("datasets", "versions_of_dataset"), {"dataset_uuid": dataset_uuid}
        ).fetchall()
    return [VersionRecord(**row) for row in rows]


def write_window(
    store: ObjectStore, window: Window, directory: Path, *, file_rows: int = DEFAULT_FILE_ROWS
) -> list[Path]:
    """Write the window's rows as Parquet files of at most ``file_rows`` rows under
    ``directory``, part by part in block order. Raises ``ArtifactInvalid`` when a part must be
    clipped and has no ``block_number`` column, or the schemas differ."""
    out = _Files(directory, window, file_rows)
    manifests: dict[uuid.UUID, list[str]] = {}
    try:
        for part in window.parts:
            rec = part.record
            if rec.dataset_version not in manifests:
                manifest = load_manifest(store, rec.manifest_key, prefix=rec.storage_prefix)
                manifests[rec.dataset_version] = manifest.parquet_keys
            for key in manifests[rec.dataset_version]:
                try:
                    source = pq.ParquetFile(pa.BufferReader(store.get_bytes(key)))
                    batches = list(source.iter_batches(batch_size=BATCH_ROWS, use_threads=False))
                except (OSError, pa.ArrowException) as exc:
                    raise ArtifactInvalid(f"{key} is not readable Parquet: {exc}") from exc
                if out.schema is None:
                    out.schema = source.schema_arrow
                elif not source.schema_arrow.equals(out.schema):
                    raise ArtifactInvalid(f"{key} has another schema than the window's first file")
                # file by file: memory stays bounded by one input file and one row group
                for batch in batches:
                    out.add(_clip(batch, part, key))
        out.finish()
    finally:
        out.close()
    return out.paths


class _Files:
    """Output files of a window: batches buffered into row groups of ``BATCH_ROWS`` rows (one
    per input range would make a compacted file slow to read), a new file every
    ``file_rows`` rows."""

    def __init__(self, directory: Path, window: Window, file_rows: int) -> None:
        self.directory, self.window, self.file_rows = directory, window, file_rows
        self.schema: pa.Schema | None = None
        self.paths: list[Path] = []
        self._writer: pq.ParquetWriter | None = None
        self._in_file = 0
        self._buffer: list[pa.RecordBatch] = []
        self._buffered = 0

    def add(self, batch: pa.RecordBatch) -> None:
        while batch.num_rows:
            room = self.file_rows - self._in_file - self._buffered
            if room <= 0:
                self._flush()
                self._roll()
                continue
            take = batch.slice(0, room)
            batch = batch.slice(take.num_rows)
            self._buffer.append(take)
            self._buffered += take.num_rows
            if self._buffered >= BATCH_ROWS:
                self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        if self._writer is None:
            self._roll()
        assert self._writer is not None
        self._writer.write_table(pa.Table.from_batches(self._buffer, schema=self.schema))
        self._in_file += self._buffered
        self._buffer, self._buffered = [], 0

    def _roll(self) -> None:
        if self._writer is not None and self._in_file == 0:
            return  # the current file is still empty
        self.close()
        path = self.directory / _file_name(self.window, len(self.paths))
        self.paths.append(path)
        assert self.schema is not None
        self._writer = pq.ParquetWriter(path, self.schema, compression="zstd")
        self._in_file = 0

    def finish(self) -> None:
        """Flush; with no rows at all, one empty file keeps the schema."""
        if self.schema is None:
            return
        self._flush()
        if not self.paths:
            self._roll()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _clip(batch: pa.RecordBatch, part: VisiblePart, key: str) -> pa.RecordBatch:
    if part.whole:
        return batch
    if "block_number" not in batch.schema.names:
        raise ArtifactInvalid(f"{key} has no block_number column to serve part of its range")
    col = batch.column("block_number")
    mask = pc.and_(pc.greater_equal(col, part.start), pc.less(col, part.end))
    return batch.filter(mask)


def _file_name(window: Window, index: int) -> str:
    return f"compacted__{window.start:012}_to_{window.end - 1:012}__{index:04}.parquet"


@translates_db_errors("dataset compaction")
def compact_window(
    conn: Connection[Any],
    store: ObjectStore,
    window: Window,
    *,
    org_id: str,
    file_rows: int = DEFAULT_FILE_ROWS,
) -> CommittedVersion:
    """Rewrite one planned window as one version (see the module docstring).

    ``conn`` is autocommit and not inside a transaction. Raises ``CompactionStale`` when the
    window changed since planning (nothing registered), ``ArtifactInvalid`` /
    ``ManifestInvalid`` for unreadable inputs, ``StorageError`` when a move fails.
    """
    first = window.parts[0].record
    staging_task = uuid.uuid5(ids.dataset_version(
        window.dataset_uuid, window.config_hash, first.chain_id, window.start, window.end,
        fake=window.fake,
    ), "compaction")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="trace_compact_") as tmp:
        paths = write_window(store, window, Path(tmp), file_rows=file_rows)
        schema, files = stage_parquet_files(store, staging_task, 1, paths)
    staged = StagedOutput(
        task_id=staging_task,
        attempt=1,
        org_id=org_id,
        dataset_uuid=window.dataset_uuid,
        dataset_key=first.dataset_key,
        chain_id=first.chain_id,
        range_start=window.start,
        range_end=window.end,
        config_hash=window.config_hash,
        schema=schema,
        files=files,
        fake=window.fake,
    )
    rows = sum(p.record.row_count for p in window.parts if p.whole)
    if all(p.whole for p in window.parts) and sum(f.rows for f in files) != rows:
        raise ArtifactInvalid(
            f"compaction of [{window.start}, {window.end}) wrote {sum(f.rows for f in files)} "
            f"rows, its versions register {rows}"
        )

    def guard(c: Connection[Any]) -> None:
        c.execute(q("datasets", "lock_dataset"), {"dataset_uuid": window.dataset_uuid})
        now = c.execute(
            q("datasets", "window_versions"),
            {"dataset_uuid": window.dataset_uuid, "start": window.start, "end": window.end},
        ).fetchall()
        if frozenset(r[0] for r in now) != window.overlapping:
            raise CompactionStale(
                f"versions of [{window.start}, {window.end}) changed since planning",
                dataset_uuid=str(window.dataset_uuid),
            )

    def mark(c: Connection[Any], committed: CommittedVersion) -> None:
        c.execute(
            q("datasets", "mark_compacted"),
            {
                "compacted": committed.record.dataset_version,
                "dataset_uuid": window.dataset_uuid,
                "start": window.start,
                "end": window.end,
            },
        )

    try:
        return commit_version(conn, store, staged, on_registered=mark, guard=guard)
    except CompactionStale:
        store.delete_prefix(ids.staging_prefix(staging_task, 1))
        raise


def compact_dataset(
    conn: Connection[Any],
    store: ObjectStore,
    dataset_uuid: uuid.UUID,
    window_blocks: int,
    *,
    org_id: str,
    upto: int | None = None,
    limit: int | None = None,
    dry_run: bool = False,
    min_versions: int = 2,
    file_rows: int = DEFAULT_FILE_ROWS,
) -> CompactionReport:
    """Plan and compact up to ``limit`` windows of one dataset (oldest first)."""
    windows = plan_windows(
        live_versions(conn, dataset_uuid), window_blocks, min_versions=min_versions, upto=upto
    )
    broken = {
        r[0]
        for r in conn.execute(
            q("datasets", "failed_versions"), {"dataset_uuid": dataset_uuid}
        ).fetchall()
    }
    windows = [w for w in windows if not (w.overlapping & broken)]  # left for verify --repair
    report = CompactionReport(dry_run=dry_run, windows=windows[:limit] if limit else windows)
    if dry_run:
        return report
    for window in report.windows:
        try:
            report.committed.append(
                compact_window(conn, store, window, org_id=org_id, file_rows=file_rows)
            )
        except CompactionStale:
            report.stale.append(window)
        except (ArtifactInvalid, ManifestInvalid, ObjectNotFound) as exc:
            report.failed.append(window)  # an unreadable input: skipped, the pass goes on
            log.warning(
                "compaction window skipped",
                extra={"window": f"{window.start}:{window.end}", "error": exc.message},
            )
    if report.committed:
        log.info(
            "dataset versions compacted",
            extra={
                "dataset_uuid": str(dataset_uuid),
                "windows": len(report.committed),
                "replaced": report.versions_replaced,
            },
        )
    return report


def compact_levels(
    conn: Connection[Any],
    store: ObjectStore,
    dataset_uuid: uuid.UUID,
    window_blocks: int,
    *,
    levels: int,
    org_id: str,
    limit: int | None = None,
    dry_run: bool = False,
    file_rows: int = DEFAULT_FILE_ROWS,
) -> CompactionReport:
    """Compact in tiers: windows of ``window_blocks``, then of 10x that over the compacted
    ones, and so on for ``levels`` tiers (an LSM's levels). A year of 1,000-block ranges with
    epochs of 100,000 blocks ends as ~10 versions of 10M blocks plus the recent tail, its files
    split by ``file_rows``: what a query opens grows with the rows, not with the ranges.
    ``limit`` caps the windows of each tier. One report for all tiers."""
    total = CompactionReport(dry_run=dry_run)
    for level in range(max(1, levels)):
        report = compact_dataset(
            conn, store, dataset_uuid, window_blocks * 10**level, org_id=org_id, limit=limit,
            dry_run=dry_run, file_rows=file_rows,
        )  # fmt: skip
        total.windows += report.windows
        total.committed += report.committed
        total.stale += report.stale
        if dry_run:
            break  # the next tier's inputs do not exist yet
    return total
