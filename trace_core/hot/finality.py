"""Finality: how deep a block must be before it is final, and which hot ranges are compactable.

A block ``n`` is final when ``n <= head - finality_depth``; a range ``[a, b)`` is final when
``b <= head - finality_depth + 1``. The follower's tip always stays hot (it anchors the next
parent-hash check), so compaction never reaches past ``head`` even with depth 0.
"""

from __future__ import annotations

from typing import Any

from psycopg import Connection

from trace_core.db.queries import q
from trace_core.settings import Settings


def finality_depth(
    settings: Settings,
    chain_id: int,
    *,
    state_conn: Connection[Any] | None = None,
    override: int | None = None,
    org_id: str | None = None,
) -> int:
    """Finality depth of ``chain_id``, first found of:

    ``override``; the largest ``finality_depth`` of the org's (``org_id``, default
    ``settings.org_id``) enabled chain_sync jobs on the chain (when ``state_conn`` is given);
    ``settings.finality_depths[chain_id]``; ``settings.finality_depth`` (64 by default).
    """
    if override is not None:
        if override < 0:
            raise ValueError(f"finality_depth must be >= 0, got {override}")
        return override
    if state_conn is not None:
        row = state_conn.execute(
            q("hot", "chain_sync_finality_depth"),
            {"org_id": org_id or settings.org_id, "chain_id": chain_id},
        ).fetchone()
        if row is not None and row[0] is not None:
            return int(row[0])
    return int(settings.finality_depths.get(chain_id, settings.finality_depth))


def final_end(head: int, depth: int) -> int:
    """Exclusive end of the final blocks: blocks ``< final_end`` are final (never above head)."""
    return max(0, min(head - depth + 1, head))


def plan_ranges(
    start: int, end: int, range_size: int, *, limit: int | None = None
) -> list[tuple[int, int]]:
    """Grid-aligned full ranges covering ``[start, end)``: ``[start, next multiple)`` first.

    Only ranges that end on a multiple of ``range_size`` (and at or before ``end``) are
    returned, so the same hot span always cuts into the same ranges (deterministic versions).
    """
    if range_size <= 0:
        raise ValueError("range_size must be > 0")
    out: list[tuple[int, int]] = []
    a = start
    while limit is None or len(out) < limit:
        b = (a // range_size + 1) * range_size
        if b > end:
            break
        out.append((a, b))
        a = b
    return out
