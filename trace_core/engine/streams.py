"""What the shell shows of chain_sync: applied streams, range partition keys, a payload's
labels (job, stream, range). Re-exported here so the shell needs only the engine."""

from __future__ import annotations

from trace_core.chain_sync import store
from trace_core.chain_sync.planner import parse_partition_key, range_partition_key
from trace_core.chain_sync.store import StreamRow
from trace_core.operators.payload import RangeLabel
from trace_core.runtime import Runtime

__all__ = [
    "RangeLabel",
    "StreamRow",
    "list_streams",
    "parse_partition_key",
    "range_partition_key",
]


def list_streams(rt: Runtime) -> list[StreamRow]:
    """Every applied stream of the runtime's org. Raises ``TraceError`` if state is unreachable
    or not migrated."""
    with rt.state() as conn:
        return store.list_streams(conn, rt.settings.org_id)
