"""Stream assets: one asset per chain_sync stream, its block ranges as dynamic partitions."""

from __future__ import annotations

import logging
import re

import psycopg
from dagster import AssetKey, AssetSpec, DynamicPartitionsDefinition

from trace_core.errors import TraceError
from trace_core.runtime import Runtime

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


def partitions_def_name(job_name: str, dataset_key: str) -> str:
    return _UNSAFE.sub("_", f"{job_name}__{dataset_key}")


def stream_asset_key(job_name: str, dataset_key: str) -> AssetKey:
    return AssetKey(["chain_sync", _UNSAFE.sub("_", job_name), dataset_key])


def stream_asset_specs(rt: Runtime) -> list[AssetSpec]:
    """Asset specs for every applied stream; empty (with a log line) if state is unreachable."""
    from trace_core.chain_sync import store
    from trace_core.db.migrate import migrate

    try:
        migrate(rt.dbs)  # idempotent: `dagster dev` on a fresh checkout just works
        with rt.state() as conn:
            streams = store.list_streams(conn, rt.settings.org_id)
    except (TraceError, psycopg.Error) as exc:
        log.warning("no stream assets: state unavailable (%s)", exc)
        return []
    return [
        AssetSpec(
            key=stream_asset_key(s.job_name, s.dataset_key),
            partitions_def=DynamicPartitionsDefinition(
                name=partitions_def_name(s.job_name, s.dataset_key)
            ),
            group_name=_UNSAFE.sub("_", s.job_name),
            description=(
                f"cryo dataset `{s.cryo_dataset_name}` of chain {s.chain_id} "
                f"(job {s.job_name}); each partition is an end-exclusive block range."
            ),
            kinds={"parquet", "cryo"},
            metadata={"chain_id": s.chain_id, "rpc_pool": s.rpc_pool},
        )
        for s in streams
    ]
