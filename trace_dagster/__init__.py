"""The Dagster shell around trace_core: resources, sensors, jobs, Definitions and components.

``trace_dagster.ChainSyncComponent`` is what ``dg scaffold defs`` names (the package is
registered in the ``dagster_dg_cli.registry_modules`` entry point group).
"""

from trace_dagster.components import ChainSyncComponent

__all__ = ["ChainSyncComponent"]
