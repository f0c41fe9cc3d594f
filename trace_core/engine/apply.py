"""chain_sync job files for the shell (the Dagster component and its scaffolder): validation,
cryo args and RPC pool limits re-exported from ``trace_core.chain_sync`` / ``rpc`` /
``yamlfile``, and ``apply_job``, which migrates state and applies a job as ``trace-lite
apply`` does."""

from __future__ import annotations

from trace_core.chain_sync import store
from trace_core.chain_sync.cryo_args import cryo_args_text
from trace_core.chain_sync.spec import ChainSyncSpec, validate_job
from trace_core.chain_sync.store import ApplyResult
from trace_core.db.migrate import migrate
from trace_core.rpc.limits import pool_limits
from trace_core.runtime import Runtime
from trace_core.yamlfile import LoadedYaml, load_yaml

__all__ = [
    "ApplyResult",
    "ChainSyncSpec",
    "LoadedYaml",
    "apply_job",
    "cryo_args_text",
    "load_yaml",
    "pool_limits",
    "validate_job",
]


def apply_job(rt: Runtime, spec: ChainSyncSpec, raw: bytes, source: str) -> ApplyResult:
    """Migrate both databases, then create or update the job in one transaction (the same
    bytes write nothing)."""
    migrate(rt.dbs)
    with rt.state() as conn:
        return store.apply_job(conn, rt.settings.org_id, spec, raw, source)
