"""Reorg handling: find the common ancestor, drop orphaned hot rows, record the invalidation.

``find_common_ancestor`` is pure (lookups are injected) so its edge cases are testable without
a chain. ``rollback_to`` is the data-DB side of a reorg: one transaction deletes every hot row
above the ancestor and inserts the ``data.data_invalidations`` row, so readers never see the
orphaned rows without the invalidation that explains their disappearance.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from psycopg import Connection
from psycopg.types.json import Jsonb

from trace_core.db.queries import q
from trace_core.errors import ReorgTooDeep
from trace_core.hot.tables import HOT_DATASETS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ancestor:
    """The highest block both the store and the chain agree on.

    ``hash`` is None when the walk went below the lowest stored block (the follower re-ingests
    from ``number + 1`` without a parent check).
    """

    number: int
    hash: bytes | None


def find_common_ancestor(
    *,
    tip: int,
    stored_hash: Callable[[int], bytes | None],
    canonical_hash: Callable[[int], bytes | None],
    lowest_stored: int,
    max_depth: int,
    chain_id: int,
    finalized_below: int = 0,
) -> Ancestor:
    """Walk down from ``tip`` to the highest block whose stored and canonical hashes agree.

    ``canonical_hash(n)`` is None when the chain has no block ``n`` (it got shorter).
    Walking below ``lowest_stored`` yields ``Ancestor(lowest_stored - 1, None)`` unless that
    block is already compacted (``< finalized_below``). Raises ``ReorgTooDeep`` when the
    walk would exceed ``max_depth`` blocks or cross into compacted (finalized) blocks.
    """
    n = tip
    while n >= lowest_stored:
        if tip - n > max_depth:
            raise ReorgTooDeep(
                chain_id, depth=tip - n, detail=f"no common ancestor within {max_depth} blocks"
            )
        ours = stored_hash(n)
        if ours is not None and ours == canonical_hash(n):
            return Ancestor(n, ours)
        n -= 1
    if n >= 0 and n < finalized_below:
        raise ReorgTooDeep(
            chain_id, depth=tip - n, detail=f"reorg reaches block {n}, already compacted to cold"
        )
    return Ancestor(n, None)


def rollback_to(
    conn: Connection[Any],
    *,
    org_id: str | uuid.UUID,
    chain_id: int,
    ancestor: int,
    old_tip: int,
    details: dict[str, Any],
) -> int:
    """Delete the org's hot rows above ``ancestor`` and record ``[ancestor + 1, old_tip + 1)``
    as invalid for the org (another org following the chain repairs its own rows).

    One data-DB transaction. Returns the invalidation id. Caller holds the (org, chain)
    follower lock.
    """
    org = uuid.UUID(str(org_id))
    params = {"org_id": org, "chain_id": chain_id, "block_number": ancestor}
    with conn.transaction():
        deleted = {
            ds: conn.execute(q("hot", f"delete_{ds}_above"), params).rowcount for ds in HOT_DATASETS
        }
        row = conn.execute(
            q("hot", "insert_invalidation"),
            {
                "org_id": org,
                "chain_id": chain_id,
                "range_start": ancestor + 1,
                "range_end": old_tip + 1,
                "reason": "reorg",
                "details": Jsonb({**details, "deleted_rows": deleted}),
            },
        ).fetchone()
    assert row is not None
    log.warning(
        "reorg rolled back",
        extra={
            "org_id": str(org),
            "chain_id": chain_id,
            "ancestor": ancestor,
            "old_tip": old_tip,
            "deleted": deleted,
        },
    )
    return int(row[0])
