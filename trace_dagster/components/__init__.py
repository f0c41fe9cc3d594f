"""Trace as Dagster components (``dg list components`` shows them once Trace is installed)."""

from trace_dagster.components.chain_sync import ChainSyncComponent

__all__ = ["ChainSyncComponent"]
