"""``dg scaffold defs trace_dagster.ChainSyncComponent NAME``: ``defs.yaml`` and ``cryo.args``.

Parameters (``--json-params`` or ``--chain-id ...`` flags) choose the chain, datasets, RPC pool,
block range or follow-head start, chunk and epoch size; the written job is validated before
any file is written, so a bad parameter fails naming it.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from dagster.components import Scaffolder, ScaffoldRequest, scaffold_component
from pydantic import BaseModel, ConfigDict, Field

from trace_core.engine.apply import ChainSyncSpec, cryo_args_text

CRYO_ARGS_FILE = "cryo.args"
_NOT_NAME = re.compile(r"[^a-z0-9_-]")


class ChainSyncScaffoldParams(BaseModel):
    """What ``dg scaffold defs`` asks for; every field has a working default (a local anvil)."""

    model_config = ConfigDict(extra="forbid")

    chain_id: int = Field(default=31337, description="EVM chain id")
    datasets: list[str] = Field(
        default_factory=lambda: ["blocks", "transactions"], description="cryo datasets"
    )
    rpc_pool: str = Field(default="demo", description="pool name: TRACE_RPC_POOL_<POOL>_URL")
    mode: Literal["fixed_target", "follow_head"] = "fixed_target"
    from_block: int = 0
    to_block: int = Field(default=2000, description="end-exclusive (fixed_target)")
    chunk_size: int = Field(default=100, description="blocks per range (one task)")
    epoch_blocks: int = Field(default=1000, description="blocks per Dagster partition")
    max_inflight: int = 4


def scaffold_attributes(name: str, p: ChainSyncScaffoldParams) -> dict[str, Any]:
    """The component attributes of a new job (the chain_sync job fields, validated)."""
    mode: dict[str, Any] = {"kind": p.mode, "from_block": p.from_block}
    if p.mode == "fixed_target":
        mode["to_block"] = p.to_block
    else:
        mode |= {"tail_lag": 2, "head_poll_interval_seconds": 5, "max_head_age_seconds": 60}
    attributes: dict[str, Any] = {
        "name": name,
        "chain_id": p.chain_id,
        "mode": mode,
        "epoch_blocks": p.epoch_blocks,
        "streams": {
            d: {
                "cryo_dataset_name": d,
                "rpc_pool": p.rpc_pool,
                "chunk_size": p.chunk_size,
                "max_inflight": p.max_inflight,
            }
            for d in p.datasets
        },
    }
    ChainSyncSpec.model_validate({"kind": "chain_sync", **attributes})
    return attributes


class ChainSyncScaffolder(Scaffolder[ChainSyncScaffoldParams]):
    @classmethod
    def get_scaffold_params(cls) -> type[ChainSyncScaffoldParams]:
        return ChainSyncScaffoldParams

    def scaffold(self, request: ScaffoldRequest[ChainSyncScaffoldParams]) -> None:
        params = request.params or ChainSyncScaffoldParams()
        name = _NOT_NAME.sub("_", request.target_path.name.lower()).strip("_-") or "chain_sync"
        attributes = scaffold_attributes(name, params)
        spec = ChainSyncSpec.model_validate({"kind": "chain_sync", **attributes})
        scaffold_component(request, attributes)
        if request.scaffold_format == "yaml":
            (request.target_path / CRYO_ARGS_FILE).write_text(cryo_args_text(spec))
