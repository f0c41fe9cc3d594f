"""Analytics over committed chain_sync datasets: native supply, top accounts, staking.

Framework-free (no Dagster): ``trace_dagster.analytics`` wraps these functions as assets.
Inputs are committed dataset versions (resolved from the registry, read through their
manifests); outputs are committed dataset versions too (``analytics.output``), so the Query
Service and alerts read them like any stream.
"""

from trace_core.analytics.catalog import CATALOG, Check, Computation, computations, kind_outputs

__all__ = ["CATALOG", "Check", "Computation", "computations", "kind_outputs"]
