"""The Trace resource: typed config mirroring trace_core settings; ``get_client`` builds a Runtime."""

from __future__ import annotations

from typing import Any

from dagster import ConfigurableResource, InitResourceContext
from pydantic import Field, PrivateAttr

from trace_core.runtime import Runtime
from trace_core.settings import load_settings


class TraceResource(ConfigurableResource):  # type: ignore[type-arg]
    """Access to Trace state, queue and object store. Unset fields come from TRACE_* env vars."""

    home: str | None = Field(default=None, description="Trace home (TRACE_HOME)")
    worker_batch_size: int | None = Field(
        default=None, description="Tasks per worker run (TRACE_WORKER_BATCH_SIZE)"
    )

    _runtime: Runtime | None = PrivateAttr(default=None)

    def _overrides(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.home:
            out["home"] = self.home
        if self.worker_batch_size:
            out["worker_batch_size"] = self.worker_batch_size
        return out

    def get_client(self) -> Runtime:
        if self._runtime is None:
            self._runtime = Runtime(load_settings(**self._overrides()))
        return self._runtime

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._runtime is not None:
            self._runtime.close()
            self._runtime = None
