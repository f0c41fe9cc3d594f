"""The ``cryo_ingest`` task payload: the typed model the planner builds (``CryoIngestTask``),
its resolved form the operator runs (``CryoIngestPayload``), and the datasets and options
cryo_ingest accepts."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from trace_core.datasets import ids
from trace_core.errors import InvalidPayload, UnknownCryoDataset
from trace_core.operators.payload import (
    NonNegativeInt,
    PositiveInt,
    StrictText,
    TaskPayload,
)

# cryo 0.3.2 datasets that need only a block range and write one kind of file (each name was
# run against anvil). Aliases and multi-dataset names are refused so a stream maps to files.
CRYO_DATASETS: frozenset[str] = frozenset(
    {
        "address_appearances", "balance_diffs", "balance_reads", "blocks", "code_diffs",
        "code_reads", "contracts", "erc20_transfers", "erc721_transfers", "four_byte_counts",
        "geth_balance_diffs", "geth_calls", "geth_code_diffs", "geth_nonce_diffs", "geth_opcodes",
        "geth_storage_diffs", "logs", "native_transfers", "nonce_diffs", "nonce_reads",
        "storage_diffs", "storage_reads", "traces", "transactions", "vm_traces",
    }
)  # fmt: skip
# Valid cryo datasets that need per-address/per-call inputs cryo_ingest does not pass.
CRYO_DATASETS_NEEDING_INPUTS: frozenset[str] = frozenset(
    {
        "balances", "codes", "erc20_balances", "erc20_metadata", "erc20_supplies",
        "erc721_metadata", "eth_calls", "javascript_traces", "nonces", "slots", "storages",
        "trace_calls",
    }
)  # fmt: skip
CRYO_ALIASES: Mapping[str, str] = {
    "txs": "transactions",
    "events": "logs",
    "slot_diffs": "storage_diffs",
    "opcode_traces": "vm_traces",
}
# cryo.freeze options a payload may set; blocks, rpc and output are Trace's.
CRYO_OPTIONS: frozenset[str] = frozenset(
    {
        "include_columns", "exclude_columns", "columns", "sort", "hex", "requests_per_second",
        "max_concurrent_requests", "max_concurrent_chunks", "inner_request_size",
        "row_group_size", "n_row_groups", "no_stats", "compression", "chunk_size", "contract",
        "topic0", "topic1", "topic2", "topic3",
    }
)  # fmt: skip
DEFAULT_CHUNK_SIZE = 1000
# --- payload -------------------------------------------------------------------------------


class CryoIngestTask(TaskPayload):
    """The ``cryo_ingest`` task payload as stored: what the planner builds for one range
    (``[range_start, range_end)``). ``CryoIngestPayload.parse`` resolves the rest."""

    chain_id: PositiveInt
    range_start: NonNegativeInt
    range_end: PositiveInt
    dataset_key: StrictText
    operator: str = "cryo_ingest"
    job_id: str | None = None
    job_name: str | None = None
    dataset_uuid: str | None = None
    cryo_dataset_name: str | None = None
    rpc_pool: str | None = None
    config_hash: Any = None  # checked in ``CryoIngestPayload.parse`` (names the field)
    cryo_options: Any = None


def validate_dataset_name(name: str) -> str:
    """Return ``name`` if cryo_ingest can extract it; else raise ``UnknownCryoDataset``."""
    if name in CRYO_DATASETS:
        return name
    if name in CRYO_ALIASES:
        raise UnknownCryoDataset(f"cryo dataset {name!r} is an alias; use {CRYO_ALIASES[name]!r}")
    if name in CRYO_DATASETS_NEEDING_INPUTS:
        raise UnknownCryoDataset(
            f"cryo dataset {name!r} needs per-address inputs that cryo_ingest does not pass"
        )
    raise UnknownCryoDataset(
        f"unknown cryo dataset {name!r}; known: {', '.join(sorted(CRYO_DATASETS))}"
    )


@dataclass(frozen=True)
class CryoIngestPayload:
    """A ``cryo_ingest`` task payload. Ranges are end-exclusive ``[range_start, range_end)``."""

    chain_id: int
    dataset_key: str
    cryo_dataset_name: str
    range_start: int
    range_end: int
    dataset_uuid: uuid.UUID
    config_hash: str
    rpc_pool: str | None = None
    cryo_options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, payload: Mapping[str, Any], *, org_id: str) -> CryoIngestPayload:
        """Validate a payload. Raises ``InvalidPayload`` naming the field, or
        ``UnknownCryoDataset`` for a dataset cryo_ingest cannot extract."""
        task = CryoIngestTask.parse(
            {k: payload[k] for k in ("chain_id", "range_start", "range_end", "dataset_key")
             if k in payload}
        )  # fmt: skip
        chain_id, start, end = task.chain_id, task.range_start, task.range_end
        if end <= start:
            raise InvalidPayload(
                "payload range_end must be greater than range_start", field="range_end"
            )
        dataset_key = task.dataset_key
        config_hash = payload.get("config_hash")
        name = payload.get("cryo_dataset_name") or (
            ids.dataset_name_from_config_hash(config_hash) if isinstance(config_hash, str) else None
        )
        if not isinstance(name, str):
            raise InvalidPayload("payload names no cryo_dataset_name", field="cryo_dataset_name")
        validate_dataset_name(name)
        options = payload.get("cryo_options", payload.get("config")) or {}
        if not isinstance(options, Mapping):
            raise InvalidPayload(
                "payload field 'cryo_options' must be an object", field="cryo_options"
            )
        bad = sorted(set(options) - CRYO_OPTIONS)
        if bad:
            raise InvalidPayload(
                f"unsupported cryo options: {', '.join(bad)}", field="cryo_options"
            )
        options = {k: v for k, v in options.items() if v is not None}
        raw_uuid = payload.get("dataset_uuid")
        try:
            dataset_uuid = (
                uuid.UUID(str(raw_uuid))
                if raw_uuid
                else ids.dataset_uuid(org_id, chain_id, dataset_key)
            )
        except ValueError:
            raise InvalidPayload(
                "payload field 'dataset_uuid' is not a UUID", field="dataset_uuid"
            ) from None
        if config_hash is not None and (not isinstance(config_hash, str) or not config_hash):
            raise InvalidPayload(
                "payload field 'config_hash' must be a non-empty string", field="config_hash"
            )
        pool = payload.get("rpc_pool")
        if pool is not None and (not isinstance(pool, str) or "://" in pool):
            raise InvalidPayload(
                "payload field 'rpc_pool' must name a pool, not a URL", field="rpc_pool"
            )
        return cls(
            chain_id=chain_id,
            dataset_key=dataset_key,
            cryo_dataset_name=name,
            range_start=start,
            range_end=end,
            dataset_uuid=dataset_uuid,
            config_hash=config_hash or ids.config_hash(name, options),
            rpc_pool=pool,
            cryo_options=dict(options),
        )

    @property
    def chunk_size(self) -> int:
        return int(self.cryo_options.get("chunk_size") or DEFAULT_CHUNK_SIZE)


def cryo_kwargs(p: CryoIngestPayload, rate_share: float | None) -> dict[str, Any]:
    """The stream's cryo options, with ``requests_per_second`` capped at the pool's share."""
    options: dict[str, Any] = {"chunk_size": p.chunk_size, **p.cryo_options}
    if rate_share is not None:
        share = max(1, int(rate_share))
        own = options.get("requests_per_second")
        options["requests_per_second"] = share if own is None else min(int(own), share)
    return options
