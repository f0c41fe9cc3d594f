"""The capability probe: which methods and tracers an RPC pool serves, per chain.

Some providers serve no ``trace_*`` methods (Monad), some no ``debug_trace*`` tracers, some no
``eth_getBlockReceipts``. The dispatcher probes each ``(chain, pool)`` its enabled streams use
once per ``rpc_capability_ttl_seconds``: every capability is one real call on a recent block.
A provider that says the method or tracer does not exist (JSON-RPC -32601, or an error saying
so) marks it missing; any other failure leaves it unknown (never blocks). A stream whose
cryo dataset needs a missing capability is not planned (``MissingRpcMethod``) and
``trace-lite status`` shows why. URLs never appear in rows, messages or logs.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from psycopg import Connection

from trace_core.db.queries import q
from trace_core.errors import RpcError, TraceError
from trace_core.settings import Settings, rpc_pool_urls

if TYPE_CHECKING:  # the RPC client (httpx) loads when a probe runs, not for status reads
    from trace_core.rpc.client import JsonRpc
    from trace_core.rpc.pool import RpcPool

log = logging.getLogger(__name__)

MISSING_RPC_METHOD = "MissingRpcMethod"
PROBE_TIMEOUT_SECONDS = 10.0

# capability -> (method, params for a block number)
CAPABILITIES: dict[str, tuple[str, Callable[[int], list[Any]]]] = {
    "eth_getLogs": ("eth_getLogs", lambda b: [{"fromBlock": hex(b), "toBlock": hex(b)}]),
    "eth_getBlockReceipts": ("eth_getBlockReceipts", lambda b: [hex(b)]),
    "trace_block": ("trace_block", lambda b: [hex(b)]),
    "trace_replayBlockTransactions": (
        "trace_replayBlockTransactions",
        lambda b: [hex(b), ["stateDiff"]],
    ),
    "debug_traceBlockByNumber:callTracer": (
        "debug_traceBlockByNumber",
        lambda b: [hex(b), {"tracer": "callTracer"}],
    ),
    "debug_traceBlockByNumber:prestateTracer": (
        "debug_traceBlockByNumber",
        lambda b: [hex(b), {"tracer": "prestateTracer", "tracerConfig": {"diffMode": True}}],
    ),
}

# cryo dataset -> the capabilities cryo uses to extract it (datasets absent need only the
# standard block/transaction methods every node serves)
DATASET_NEEDS: dict[str, tuple[str, ...]] = {
    "logs": ("eth_getLogs",),
    "erc20_transfers": ("eth_getLogs",),
    "erc721_transfers": ("eth_getLogs",),
    "traces": ("trace_block",),
    "native_transfers": ("trace_block",),
    "contracts": ("trace_block",),
    "address_appearances": ("trace_block",),
    "balance_diffs": ("trace_replayBlockTransactions",),
    "code_diffs": ("trace_replayBlockTransactions",),
    "nonce_diffs": ("trace_replayBlockTransactions",),
    "storage_diffs": ("trace_replayBlockTransactions",),
    "vm_traces": ("trace_replayBlockTransactions",),
    "geth_calls": ("debug_traceBlockByNumber:callTracer",),
    "geth_balance_diffs": ("debug_traceBlockByNumber:prestateTracer",),
    "geth_code_diffs": ("debug_traceBlockByNumber:prestateTracer",),
    "geth_nonce_diffs": ("debug_traceBlockByNumber:prestateTracer",),
    "geth_storage_diffs": ("debug_traceBlockByNumber:prestateTracer",),
}

_NOT_SERVED = re.compile(
    r"not (found|supported|available|enabled|allowed|implemented)|does not exist|unsupported"
    r"|unknown (method|tracer)|disabled",
    re.IGNORECASE,
)
_METHOD_NOT_FOUND = -32601


@dataclass(frozen=True)
class Probe:
    capability: str
    served: bool | None  # None: the probe could not tell (timeout, other error)
    detail: str | None = None


def probe(rpc: JsonRpc, block: int) -> list[Probe]:
    """One call per capability on ``block``. Never raises for a refused method."""
    out = []
    for capability, (method, params) in CAPABILITIES.items():
        try:
            rpc.call(method, params(block))
        except RpcError as exc:
            code = exc.fields.get("rpc_code")
            missing = code == _METHOD_NOT_FOUND or (
                code is not None and bool(_NOT_SERVED.search(exc.message))
            )
            out.append(Probe(capability, False if missing else None, exc.message[:300]))
            continue
        out.append(Probe(capability, True))
    return out


def probe_pool(pool: RpcPool, chain_id: int) -> list[Probe]:
    """Probe every usable endpoint; a capability is served if any endpoint serves it, missing
    if every endpoint refuses it. Raises what ``RpcPool.check`` raises."""
    usable, checks = pool.check(chain_id)
    head = min(c.head for c in checks if c.problem is None and c.head is not None)
    block = max(0, head - 1)
    per_endpoint = [probe(endpoint.client, block) for endpoint in usable.endpoints]
    merged = []
    for i, capability in enumerate(CAPABILITIES):
        seen = [probes[i] for probes in per_endpoint]
        if any(p.served for p in seen):
            merged.append(Probe(capability, True))
        elif all(p.served is False for p in seen):
            merged.append(Probe(capability, False, seen[0].detail))
        else:
            merged.append(Probe(capability, None, next((p.detail for p in seen if p.detail), None)))
    return merged


def probe_due(
    conn: Connection[Any],
    org_id: str | uuid.UUID,
    settings: Settings,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Probe the ``(chain, pool)`` pairs that are due and record what they serve; returns
    the number probed. Pools without URLs or unreachable are skipped (the head observer and
    the status report those). ``conn`` must not be inside a transaction."""
    with conn.transaction():
        due = conn.execute(
            q("rpc_capabilities", "due_capability_pools"),
            {"org_id": org_id, "ttl_seconds": settings.rpc_capability_ttl_seconds},
        ).fetchall()
    probed = 0
    for chain_id, pool_name in due:
        if not rpc_pool_urls(pool_name, environ):
            continue
        try:
            from trace_core.rpc.pool import RpcPool

            with RpcPool.from_env(
                pool_name, settings, environ, timeout=PROBE_TIMEOUT_SECONDS
            ) as pool:
                probes = probe_pool(pool, chain_id)
        except TraceError as exc:
            log.info(
                "capability probe skipped",
                extra={"chain_id": chain_id, "rpc_pool": pool_name, "error": exc.message},
            )
            continue
        with conn.transaction():
            for p in probes:
                conn.execute(
                    q("rpc_capabilities", "upsert_capability"),
                    {
                        "org_id": org_id,
                        "chain_id": chain_id,
                        "rpc_pool": pool_name,
                        "capability": p.capability,
                        "served": p.served,
                        "detail": p.detail,
                    },
                )
        missing = [p.capability for p in probes if p.served is False]
        log.info(
            "capability probe",
            extra={"chain_id": chain_id, "rpc_pool": pool_name, "missing": missing},
        )
        probed += 1
    return probed


MissingByPool = dict[tuple[int, str], dict[str, str | None]]


def missing_capabilities(conn: Connection[Any], org_id: str | uuid.UUID) -> MissingByPool:
    """``{(chain_id, pool): {capability: detail}}`` of what probes found missing."""
    out: MissingByPool = {}
    rows = conn.execute(q("rpc_capabilities", "missing_capabilities"), {"org_id": org_id})
    for chain_id, pool, capability, detail, _probed_at in rows.fetchall():
        out.setdefault((chain_id, pool), {})[capability] = detail
    return out


def blocked_reason(
    dataset: str, pool: str, chain_id: int, missing: Mapping[str, str | None] | None
) -> str | None:
    """Why ``dataset`` cannot be extracted through ``pool`` (None: nothing it needs is
    known to be missing)."""
    if not missing:
        return None
    lacking = [c for c in DATASET_NEEDS.get(dataset, ()) if c in missing]
    if not lacking:
        return None
    names = ", ".join(c.replace(":", " with ") for c in lacking)
    return (
        f"pool {pool} does not serve {names} on chain {chain_id}, needed by {dataset}; "
        "add an endpoint that does (TRACE_RPC_POOL_<POOL>_URLS) or use another dataset"
    )
