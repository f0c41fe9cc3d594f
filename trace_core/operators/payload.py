"""Typed task payloads: each operator module declares one model (a frozen pydantic model).

Whoever creates a task (the planner, routing, a sensor) builds the model and stores
``model.to_json()``; the operator parses it back with ``Model.parse(payload)``; trace_dagster
reads labels from it the same way. Integers are strict (no bools, no numeric strings), as the
hand-written checks they replace were.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError

from trace_core.errors import InvalidPayload


class TaskPayload(BaseModel):
    """Base of every operator's payload: frozen, unknown keys ignored (older payloads and
    extra labels stay readable)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    @classmethod
    def parse(cls, payload: Mapping[str, Any]) -> Self:
        """Validate ``payload``. Raises ``InvalidPayload`` naming the first bad field."""
        try:
            return cls.model_validate(dict(payload))
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or None
            raise InvalidPayload(f"payload field {field!r}: {err['msg']}", field=field) from None

    def to_json(self) -> dict[str, Any]:
        """The JSON-ready payload stored on the task."""
        return self.model_dump(mode="json")


# Strict integers: a bool or a numeric string is refused, as before.
PositiveInt = Annotated[int, Strict(), Field(ge=1)]
NonNegativeInt = Annotated[int, Strict(), Field(ge=0)]
StrictText = Annotated[str, Strict()]


class RangeLabel(TaskPayload):
    """The labels any task payload may carry (chain_sync job, stream, block range): what run
    tags, materializations and observations name. Every field is optional."""

    job_name: str | None = None
    dataset_key: str | None = None
    range_start: int | None = None
    range_end: int | None = None

    @classmethod
    def of(cls, payload: Mapping[str, Any]) -> RangeLabel:
        """The labels of ``payload``; malformed labels are left out, never raised."""
        out: dict[str, Any] = {}
        for name, kind in (
            ("job_name", str),
            ("dataset_key", str),
            ("range_start", int),
            ("range_end", int),
        ):
            value = payload.get(name)
            if value is None:
                continue
            try:
                out[name] = kind(value)
            except (TypeError, ValueError):
                continue
        return cls(**out)

    @property
    def block_range(self) -> tuple[int, int] | None:
        if self.range_start is None or self.range_end is None:
            return None
        return self.range_start, self.range_end

    @property
    def is_chain_sync_range(self) -> bool:
        """A range a chain_sync job planned (its stream asset has a partition for it)."""
        return self.job_name is not None and self.dataset_key is not None
