"""Dagster pools of Trace's RPC pools: every epoch run of a stream takes one slot of its RPC
pool's Dagster pool, whose slot count is ``TRACE_RPC_POOL_<POOL>_MAX_CONCURRENT``.

Both paths set the limits: the component's ``trace_apply__<job>`` sensor for its job, and the
dispatcher sensor (workspace.yaml path) for every applied stream, on its first tick and every
partition resync. A pool without ``..._MAX_CONCURRENT`` keeps the instance's default
(``concurrency: pools: default_limit`` in dagster.yaml), and one whose limit is already right is
not written again.
"""

# No `from __future__ import annotations` here: Dagster resolves annotations at runtime.
import re
from collections.abc import Iterable
from typing import Any

from dagster import BackfillPolicy

from trace_core.engine.apply import pool_limits

_UNSAFE = re.compile(r"[^A-Za-z0-9_]")

# One epoch per run: a backfill of many epochs is many runs, each holding one pool slot.
STREAM_BACKFILL_POLICY = BackfillPolicy.multi_run(max_partitions_per_run=1)


def dagster_pool(rpc_pool: str) -> str:
    """The Dagster pool of an RPC pool: every epoch run of its streams takes one slot."""
    return f"trace_rpc_{_UNSAFE.sub('_', rpc_pool)}"


def set_pool_limits(instance: Any, rpc_pools: Iterable[str]) -> dict[str, int]:
    """Set each RPC pool's Dagster slots to ``TRACE_RPC_POOL_<P>_MAX_CONCURRENT`` (pools
    without one keep the instance's default); returns the limits of the pools that have one.
    Raises ``ConfigError`` naming a malformed variable."""
    storage = instance.event_log_storage
    out: dict[str, int] = {}
    for pool in sorted(set(rpc_pools)):
        limit = pool_limits(pool).max_concurrent
        if limit is None:
            continue
        name = dagster_pool(pool)
        info = storage.get_concurrency_info(name)
        if info.slot_count != limit:
            storage.set_concurrency_slots(name, limit)
        out[name] = limit
    return out
