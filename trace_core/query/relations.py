"""What a query reads: relations of exact files and hot sources, built by ``attach``.

Kept apart from ``attach`` (Postgres, manifests, tokens) so the engine's worker processes
import only what running a query needs; these values cross the process boundary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trace_core.datasets.registry import VersionRecord


@dataclass(frozen=True)
class HotSource:
    """Rows of the Postgres table ``schema.table`` with ``block_number >= min_block`` or inside
    one of ``gaps`` (end-exclusive ranges below it that no cold version covers), and
    ``chain_id`` and ``org_id`` equal, when set (the follower's tables hold every org's rows;
    row-level security filters them too). ``url`` is a libpq URL: a secret, kept out of
    repr/logs."""

    url: str = field(repr=False)
    table: str
    min_block: int
    chain_id: int | None = None
    gaps: tuple[tuple[int, int], ...] = ()
    org_id: str | None = None

    def block_predicate(self) -> str:
        """SQL (Postgres or DuckDB) selecting the rows this source serves; integers and a
        validated uuid only."""
        from trace_core.hot.tables import hot_rows_predicate  # only queries with hot rows

        return hot_rows_predicate(self.min_block, self.gaps, self.chain_id, self.org_id)


@dataclass(frozen=True)
class ClippedFiles:
    """Files of a version that serves only blocks ``[start, end)`` of its range (a newer
    version serves the rest; ``registry.visible_parts``)."""

    files: tuple[str, ...]
    start: int
    end: int


@dataclass(frozen=True)
class Relation:
    """What one relation name reads: exact file URIs and optional hot sources.

    ``files`` are read whole; ``clipped`` only within their block bounds. ``columns`` (DuckDB
    ``(name, type)`` pairs) shapes a relation that has no files: its hot rows are cast to it,
    and with no hot rows it is an empty relation of that shape.
    """

    name: str
    files: tuple[str, ...]
    versions: tuple[VersionRecord, ...]
    hot: tuple[HotSource, ...] = ()
    columns: tuple[tuple[str, str], ...] = ()
    clipped: tuple[ClippedFiles, ...] = ()

    @property
    def all_files(self) -> tuple[str, ...]:
        return self.files + tuple(uri for c in self.clipped for uri in c.files)
