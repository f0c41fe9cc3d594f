"""The hot path: block follower at the chain tip, reorg repair, hot tables, compaction to cold.

See docs/hot_path.md. Public entry points: ``follow_once`` (one bounded follower step),
``write_block`` (idempotent hot write), ``compact_once`` / ``compact_range`` /
``delete_compacted`` (hot -> cold), ``hot_boundary`` and ``federated_sources`` (what a
federated read unions), ``finality_depth``.
"""

from trace_core.hot.compact import CompactedRange, CompactResult, compact_once, compact_range
from trace_core.hot.federation import FederatedSources, federated_sources, hot_boundary
from trace_core.hot.finality import final_end, finality_depth
from trace_core.hot.follower import DATASET_EVENTS, FollowResult, follow_once
from trace_core.hot.prune import delete_compacted
from trace_core.hot.tables import HOT_DATASETS, write_block, write_blocks

__all__ = [
    "DATASET_EVENTS",
    "HOT_DATASETS",
    "CompactResult",
    "CompactedRange",
    "FederatedSources",
    "FollowResult",
    "compact_once",
    "compact_range",
    "delete_compacted",
    "federated_sources",
    "final_end",
    "finality_depth",
    "follow_once",
    "hot_boundary",
    "write_block",
    "write_blocks",
]
