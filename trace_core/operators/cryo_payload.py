"""The ``cryo_ingest`` task payload (``CryoIngestTask``: the planner builds it, the operator
parses it back with ``CryoIngestTask.parse(payload, org_id=...)``, which also fills what a
payload may leave out), and the datasets and options cryo_ingest accepts."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Annotated, Any, Self

from pydantic import Field, ValidationInfo, field_validator, model_validator

from trace_core.datasets import ids
from trace_core.errors import InvalidPayload, UnknownCryoDataset
from trace_core.operators.payload import (
    NonNegativeInt,
    PositiveInt,
    StrictText,
    TaskPayload,
)

OPERATOR = "cryo_ingest"

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


class CryoIngestTask(TaskPayload):
    """The ``cryo_ingest`` task payload: one range ``[range_start, range_end)`` of a stream.

    The planner fills every field. ``parse`` also accepts what older or hand-made payloads
    leave out: ``dataset_uuid`` (derived from the org, chain and stream), ``cryo_dataset_name``
    (from ``config_hash``), ``config_hash`` (from the dataset and options), and the options
    under their old key ``config``. Malformed fields raise ``InvalidPayload`` naming the field;
    a dataset cryo_ingest cannot extract raises ``UnknownCryoDataset``.
    """

    chain_id: PositiveInt
    range_start: NonNegativeInt
    range_end: PositiveInt
    dataset_key: StrictText
    operator: str = OPERATOR
    job_id: str | None = None
    job_name: str | None = None
    dataset_uuid: uuid.UUID | None = None
    cryo_dataset_name: str | None = None
    rpc_pool: str | None = None
    config_hash: Annotated[str, Field(min_length=1)] | None = None
    cryo_options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _old_options_key(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "cryo_options" not in data and "config" in data:
            return {**data, "cryo_options": data["config"]}
        return data

    @field_validator("range_end")
    @classmethod
    def _end_after_start(cls, end: int, info: ValidationInfo) -> int:
        start = info.data.get("range_start")
        if start is not None and end <= start:
            raise ValueError("range_end must be greater than range_start")
        return end

    @field_validator("dataset_uuid", mode="before")
    @classmethod
    def _blank_uuid_is_unset(cls, value: Any) -> Any:
        return value or None

    @field_validator("rpc_pool")
    @classmethod
    def _pool_not_url(cls, pool: str | None) -> str | None:
        if pool is not None and "://" in pool:
            raise ValueError("must name a pool, not a URL")
        return pool

    @field_validator("cryo_options", mode="before")
    @classmethod
    def _options(cls, options: Any) -> Any:
        if options is None:
            return {}
        if isinstance(options, Mapping):
            bad = sorted(set(options) - CRYO_OPTIONS)
            if bad:
                raise ValueError(f"unsupported cryo options: {', '.join(bad)}")
            return dict(options)
        return options

    @classmethod
    def parse(cls, payload: Mapping[str, Any], *, org_id: str | None = None) -> Self:
        """Validate ``payload`` and fill what it leaves out (``dataset_uuid`` needs ``org_id``).
        Raises ``InvalidPayload`` or ``UnknownCryoDataset``."""
        task = super().parse(payload)
        name = task.cryo_dataset_name or (
            ids.dataset_name_from_config_hash(task.config_hash) if task.config_hash else None
        )
        if name is None:
            raise InvalidPayload("payload names no cryo_dataset_name", field="cryo_dataset_name")
        validate_dataset_name(name)
        options = {k: v for k, v in task.cryo_options.items() if v is not None}
        return task.model_copy(
            update={
                "cryo_options": options,
                "cryo_dataset_name": name,
                "dataset_uuid": task.dataset_uuid
                or (ids.dataset_uuid(org_id, task.chain_id, task.dataset_key) if org_id else None),
                "config_hash": task.config_hash or ids.config_hash(name, options),
            }
        )

    @property
    def cryo_name(self) -> str:
        """The cryo dataset to extract (set once ``parse`` resolved the payload)."""
        if self.cryo_dataset_name is None:
            raise InvalidPayload("payload names no cryo_dataset_name", field="cryo_dataset_name")
        return self.cryo_dataset_name

    @property
    def version_config_hash(self) -> str:
        """The config hash the version is registered under (``parse`` fills a missing one)."""
        if self.config_hash is None:
            return ids.config_hash(self.cryo_name, self.cryo_options)
        return self.config_hash

    @property
    def dataset_id(self) -> uuid.UUID:
        """The dataset's id (set once ``parse`` resolved the payload)."""
        if self.dataset_uuid is None:
            raise InvalidPayload("payload names no dataset_uuid", field="dataset_uuid")
        return self.dataset_uuid

    @property
    def chunk_size(self) -> int:
        return int(self.cryo_options.get("chunk_size") or DEFAULT_CHUNK_SIZE)


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


def cryo_kwargs(p: CryoIngestTask, rate_share: float | None) -> dict[str, Any]:
    """The stream's cryo options, with ``requests_per_second`` capped at the pool's share."""
    options: dict[str, Any] = {"chunk_size": p.chunk_size, **p.cryo_options}
    if rate_share is not None:
        share = max(1, int(rate_share))
        own = options.get("requests_per_second")
        options["requests_per_second"] = share if own is None else min(int(own), share)
    return options
