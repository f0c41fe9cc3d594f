"""Integrity checks of committed dataset versions: pure functions over what was read.

``check_version_files`` is the only I/O here (the object store): it re-reads every object a
version's manifest lists and compares size, sha256 and Parquet row count, and lists the
version prefix for foreign objects. The data checks (``check_rows``, ``check_hash_chain``,
``check_counts``) are pure functions of Arrow tables and the chain facts the RPC reported,
so every edge case is testable without a store or a node.

Every problem is a ``Finding`` naming its kind, the committed range, the version and, for
file problems, the object key.
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from trace_core.datasets.manifest import load_manifest
from trace_core.datasets.registry import VersionRecord, VisiblePart
from trace_core.errors import ManifestInvalid, ObjectNotFound
from trace_core.storage.base import ObjectStore

# Kinds of findings. File kinds make the version unreadable as committed; data kinds mean the
# committed rows disagree with themselves, their neighbours or the chain.
FILE_KINDS = frozenset(
    {
        "manifest_missing",
        "manifest_invalid",
        "manifest_mismatch",
        "missing_file",
        "truncated",
        "size_mismatch",
        "tampered",
        "unreadable",
        "row_count",
        "foreign_file",
    }
)
DATA_KINDS = frozenset(
    {
        "coverage_gap",
        "block_gap",
        "duplicate",
        "out_of_range",
        "parent_hash",
        "block_hash",
        "tx_count",
        "log_count",
    }
)
# The natural key of each dataset (rows that must be unique) and the columns the checks read.
ROW_KEYS: Mapping[str, tuple[str, ...]] = {
    "blocks": ("block_number",),
    "transactions": ("block_number", "transaction_index"),
    "logs": ("block_number", "log_index"),
}
CHECK_COLUMNS: Mapping[str, tuple[str, ...]] = {
    "blocks": ("block_number", "block_hash", "parent_hash"),
    "transactions": ("block_number", "transaction_index"),
    "logs": ("block_number", "log_index"),
}
DEFAULT_COLUMNS = ("block_number",)


@dataclass(frozen=True)
class Finding:
    """One integrity problem of a committed range (end-exclusive ``[range_start, range_end)``)."""

    kind: str
    range_start: int
    range_end: int
    detail: str
    dataset_version: str | None = None
    file: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "range": [self.range_start, self.range_end],
            "dataset_version": self.dataset_version,
            "file": self.file,
            "detail": self.detail,
        }

    def line(self) -> str:
        where = f" file {self.file}" if self.file else ""
        return f"[{self.range_start}, {self.range_end}) {self.kind}{where}: {self.detail}"


@dataclass(frozen=True)
class BlockFacts:
    """What the chain reports for one block: its hash, parent hash and transaction count."""

    hash: bytes
    parent_hash: bytes
    tx_count: int


@dataclass
class VersionData:
    """A version's file findings and, when every file is intact, the checked columns."""

    record: VersionRecord
    findings: list[Finding]
    table: pa.Table | None


def columns_for(dataset: str) -> tuple[str, ...]:
    return CHECK_COLUMNS.get(dataset, DEFAULT_COLUMNS)


def _finding(rec: VersionRecord, kind: str, detail: str, file: str | None = None) -> Finding:
    return Finding(kind, rec.range_start, rec.range_end, detail, str(rec.dataset_version), file)


def check_version_files(
    store: ObjectStore, rec: VersionRecord, columns: Sequence[str]
) -> VersionData:
    """Re-read a version's manifest and every file it lists; list the prefix for extras.

    Never raises for a broken version: each problem is a finding. Storage errors other than
    a missing object propagate (the check could not run).
    """
    out: list[Finding] = []
    listed = {o.key: o.size for o in store.list(rec.storage_prefix)}
    try:
        manifest = load_manifest(store, rec.manifest_key, prefix=rec.storage_prefix)
    except ObjectNotFound:
        out.append(_finding(rec, "manifest_missing", "the manifest is gone", rec.manifest_key))
        return VersionData(rec, out, None)
    except ManifestInvalid as exc:
        out.append(_finding(rec, "manifest_invalid", str(exc), rec.manifest_key))
        return VersionData(rec, out, None)
    registered = (rec.row_count, rec.file_count, rec.bytes, rec.range_start, rec.range_end)
    declared = (
        manifest.row_count,
        len(manifest.files),
        manifest.total_bytes,
        manifest.range_start,
        manifest.range_end,
    )
    if manifest.dataset_version != rec.dataset_version or registered != declared:
        out.append(
            _finding(
                rec,
                "manifest_mismatch",
                "manifest (rows, files, bytes, start, end) "
                f"{declared} differs from the registry's {registered}",
                rec.manifest_key,
            )
        )
    expected = {f.key for f in manifest.files} | {rec.manifest_key}
    for key in sorted(set(listed) - expected):
        out.append(
            _finding(
                rec, "foreign_file", "object under the version prefix is not in the manifest", key
            )
        )
    tables: list[pa.Table] = []
    intact = True
    for f in manifest.files:
        if f.key not in listed:
            out.append(
                _finding(rec, "missing_file", "listed in the manifest, not in the store", f.key)
            )
            intact = False
            continue
        try:
            data = store.get_bytes(f.key)
        except ObjectNotFound:
            out.append(
                _finding(rec, "missing_file", "listed in the manifest, not in the store", f.key)
            )
            intact = False
            continue
        if len(data) != f.size:
            kind = "truncated" if len(data) < f.size else "size_mismatch"
            out.append(_finding(rec, kind, f"{len(data)} bytes, the manifest says {f.size}", f.key))
            intact = False
            continue
        digest = hashlib.sha256(data).hexdigest()
        if digest != f.sha256:
            out.append(
                _finding(
                    rec, "tampered", f"sha256 {digest[:16]}... differs from the manifest's", f.key
                )
            )
            intact = False
            continue
        try:
            pfile = pq.ParquetFile(io.BytesIO(data))
            rows = pfile.metadata.num_rows
            names = set(pfile.schema_arrow.names)
            table = pfile.read(columns=[c for c in columns if c in names])
        except (OSError, pa.ArrowException) as exc:
            out.append(_finding(rec, "unreadable", f"not readable Parquet: {exc}", f.key))
            intact = False
            continue
        if rows != f.rows:
            out.append(
                _finding(rec, "row_count", f"{rows} rows, the manifest says {f.rows}", f.key)
            )
            intact = False
            continue
        tables.append(table)
    combined = pa.concat_tables(tables, promote_options="default") if intact and tables else None
    return VersionData(rec, out, combined)


# --- data checks (pure) ------------------------------------------------------------------------


def _ints(table: pa.Table, name: str) -> list[int]:
    return [int(v) for v in table.column(name).to_pylist()] if name in table.column_names else []


def _span(numbers: Iterable[int]) -> str:
    nums = sorted(numbers)
    shown = ", ".join(str(n) for n in nums[:5])
    return shown + (f" and {len(nums) - 5} more" if len(nums) > 5 else "")


def rows_in_part(part: VisiblePart, table: pa.Table) -> pa.Table:
    """The rows of ``table`` whose block_number lies in the part's served blocks."""
    if "block_number" not in table.column_names:
        return table
    import pyarrow.compute as pc

    col = table.column("block_number")
    mask = pc.and_(pc.greater_equal(col, part.start), pc.less(col, part.end))
    return table.filter(mask)


def check_rows(part: VisiblePart, table: pa.Table, dataset: str) -> list[Finding]:
    """Rows outside the version's range, duplicate natural keys, and (blocks) missing blocks."""
    rec = part.record
    out: list[Finding] = []
    numbers = _ints(table, "block_number")
    outside = {n for n in numbers if not rec.range_start <= n < rec.range_end}
    if outside:
        out.append(
            _finding(rec, "out_of_range", f"rows of blocks {_span(outside)} lie outside the range")
        )
    served = rows_in_part(part, table)
    key_cols = [c for c in ROW_KEYS.get(dataset, ()) if c in served.column_names]
    if key_cols:
        keys = Counter(zip(*(served.column(c).to_pylist() for c in key_cols), strict=True))
        dupes = [k for k, n in keys.items() if n > 1]
        if dupes:
            blocks = {int(k[0]) for k in dupes}
            out.append(
                _finding(
                    rec,
                    "duplicate",
                    f"{len(dupes)} duplicate {'/'.join(key_cols)} keys in blocks {_span(blocks)}",
                )
            )
    if dataset == "blocks":
        have = set(_ints(served, "block_number"))
        missing = [n for n in range(part.start, part.end) if n not in have]
        if missing:
            out.append(
                _finding(rec, "block_gap", f"{len(missing)} blocks missing: {_span(missing)}")
            )
    return out


def block_hashes(table: pa.Table) -> tuple[dict[int, bytes], dict[int, bytes]]:
    """``(hash by block, parent hash by block)`` from a blocks table (parent when present)."""
    numbers = _ints(table, "block_number")
    hashes = table.column("block_hash").to_pylist() if "block_hash" in table.column_names else []
    parents = table.column("parent_hash").to_pylist() if "parent_hash" in table.column_names else []
    by_hash = {n: bytes(h) for n, h in zip(numbers, hashes, strict=False) if h is not None}
    by_parent = {n: bytes(p) for n, p in zip(numbers, parents, strict=False) if p is not None}
    return by_hash, by_parent


def check_hash_chain(
    part: VisiblePart,
    hashes: Mapping[int, bytes],
    parents: Mapping[int, bytes],
    chain: Mapping[int, BlockFacts],
) -> list[Finding]:
    """Blocks dataset: every block's hash equals the chain's, and each block's parent hash
    (stored, else the chain's) equals the stored hash of the block below it, across the part's
    first and last block into its neighbours' blocks."""
    rec = part.record
    out: list[Finding] = []
    differ = [
        n
        for n in range(part.start, part.end)
        if chain and n in hashes and (n not in chain or hashes[n] != chain[n].hash)
    ]
    if differ:
        out.append(
            _finding(
                rec,
                "block_hash",
                f"{len(differ)} block hashes differ from the chain's (orphaned by a reorg?): "
                f"blocks {_span(differ)}",
            )
        )
    broken = []
    for n in range(part.start, part.end + 1):
        if n == 0 or (n == part.end and n not in hashes and n not in chain):
            continue
        parent = parents.get(n) or (chain[n].parent_hash if n in chain else None)
        below = hashes.get(n - 1)
        if parent is not None and below is not None and parent != below:
            broken.append(n)
    if broken:
        out.append(
            _finding(
                rec,
                "parent_hash",
                f"parent hash of blocks {_span(broken)} does not match the stored hash below",
            )
        )
    return out


def check_counts(
    part: VisiblePart, table: pa.Table, dataset: str, expected: Mapping[int, int]
) -> list[Finding]:
    """transactions/logs: rows per block equal the chain's count for every served block."""
    kind = {"transactions": "tx_count", "logs": "log_count"}.get(dataset)
    if kind is None:
        return []
    have = Counter(_ints(rows_in_part(part, table), "block_number"))
    wrong = [
        n for n in range(part.start, part.end) if n in expected and have.get(n, 0) != expected[n]
    ]
    if not wrong:
        return []
    first = wrong[0]
    return [
        _finding(
            part.record,
            kind,
            f"{len(wrong)} blocks hold a different count than the chain reports, "
            f"first block {first}: {have.get(first, 0)} rows, chain {expected[first]}",
        )
    ]
