"""The parquet_compact operator: final hot ranges -> committed cold versions.

Payload ``{"chain_id", "datasets"?, "range_size"?, "finality_depth"?, "delete_hot"?,
"max_ranges"?}`` runs ``compact_once``; adding ``"dataset_key", "range_start", "range_end"``
compacts exactly that range (``compact_range``; the caller vouches it is final). Both are
idempotent: a range maps to one deterministic version, so a retried task registers nothing
new. Production compacts as a service (``engine.service_steps.compactor_step`` calls
``hot.compact.compact_chain``) and does not register this operator; an embedding that wants
compaction as a task registers it with ``register`` (the tests do).
"""

from __future__ import annotations

from typing import Any, Self

from pydantic import field_validator, model_validator

from trace_core.errors import InvalidPayload
from trace_core.hot.compact import CompactedRange, compact_chain, compact_range
from trace_core.hot.tables import HOT_DATASETS
from trace_core.operators.base import Completion, OperatorContext, OperatorRegistry
from trace_core.operators.payload import NonNegativeInt, PositiveInt, TaskPayload

OPERATOR = "parquet_compact"


def _range_json(c: CompactedRange) -> dict[str, Any]:
    return {
        "dataset_key": c.dataset_key,
        "range_start": c.range_start,
        "range_end": c.range_end,
        "dataset_version": str(c.dataset_version),
        "row_count": c.row_count,
        "newly_registered": c.newly_registered,
    }


class ParquetCompactPayload(TaskPayload):
    """A ``parquet_compact`` task payload: compact a chain's final hot ranges, or exactly one
    range when ``dataset_key`` is given (with ``range_start``/``range_end``)."""

    chain_id: PositiveInt
    dataset_key: str | None = None
    range_start: NonNegativeInt | None = None
    range_end: PositiveInt | None = None
    datasets: list[str] | None = None
    range_size: PositiveInt | None = None
    finality_depth: NonNegativeInt | None = None
    delete_hot: bool = False
    max_ranges: PositiveInt | None = None

    @field_validator("datasets")
    @classmethod
    def _hot_datasets(cls, datasets: list[str] | None) -> list[str] | None:
        if datasets is not None and not all(d in HOT_DATASETS for d in datasets):
            raise ValueError(f"datasets must be a list drawn from {list(HOT_DATASETS)}")
        return datasets

    @model_validator(mode="after")
    def _one_range(self) -> Self:
        if self.dataset_key is not None and (
            self.range_start is None or self.range_end is None or self.range_end <= self.range_start
        ):
            raise InvalidPayload(
                "range_start/range_end must form a non-empty range", field="range_end"
            )
        return self


def parquet_compact_operator(ctx: OperatorContext) -> Completion:
    """Worker entry point. Raises ``InvalidPayload`` for a malformed payload."""

    p = ParquetCompactPayload.parse(ctx.lease.payload)
    rt = ctx.runtime
    if p.dataset_key is not None:
        start, end = p.range_start, p.range_end
        assert start is not None and end is not None  # the payload model checked the range
        try:
            c = compact_range(
                rt.settings, rt.dbs, p.chain_id, p.dataset_key, start, end, store=rt.store
            )
        except ValueError as exc:
            raise InvalidPayload(str(exc), field="dataset_key") from exc
        ctx.check_lease()
        return Completion(outputs={"committed": [_range_json(c)]})
    datasets = list(HOT_DATASETS) if p.datasets is None else p.datasets
    result = compact_chain(
        rt,
        p.chain_id,
        datasets=tuple(datasets),
        range_size=p.range_size,
        finality_depth=p.finality_depth,
        delete_hot=p.delete_hot,
        max_ranges=p.max_ranges or 10,
    )
    ctx.check_lease()
    return Completion(
        outputs={
            "committed": [_range_json(c) for c in result.committed],
            "deleted_rows": result.deleted_rows,
            "final_end": result.final_end,
            "skipped": result.skipped,
        }
    )


def register(registry: OperatorRegistry) -> None:
    """Add ``parquet_compact`` to a worker registry."""
    registry.register(OPERATOR, parquet_compact_operator)
