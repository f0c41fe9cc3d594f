"""Genesis allocations: the balances every account had at block 0 (exact integers, wei)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from trace_core.analytics.jobs import AnalyticsJob
from trace_core.errors import ConfigError
from trace_core.rpc.client import RpcClient, hex_int
from trace_core.settings import Settings, rpc_pool_env_var, rpc_pool_url

_ADDRESS = re.compile(r"^0x[0-9a-f]{40}$")
MAX_WEI = 10**38 - 1  # DECIMAL(38,0)


def parse_alloc(data: object, *, source: str) -> dict[str, int]:
    """``{address: wei}`` from a JSON object of address -> balance (decimal string, int, or
    0x-hex string; geth's ``{"alloc": {addr: {"balance": ...}}}`` also works).

    Raises ``ConfigError`` naming ``source`` and the bad entry."""
    if isinstance(data, Mapping) and isinstance(data.get("alloc"), Mapping):
        data = data["alloc"]
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: genesis allocation must be a JSON object of address: balance")
    out: dict[str, int] = {}
    for raw_addr, raw in data.items():
        addr = str(raw_addr).lower()
        if not addr.startswith("0x"):
            addr = "0x" + addr
        if not _ADDRESS.match(addr):
            raise ConfigError(f"{source}: {raw_addr!r} is not a 20-byte hex address")
        value = raw.get("balance") if isinstance(raw, Mapping) else raw
        try:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, int):
                wei = value
            elif isinstance(value, str) and value.lower().startswith("0x"):
                wei = int(value, 16)
            elif isinstance(value, str):
                wei = int(value, 10)
            else:
                raise ValueError
        except ValueError:
            raise ConfigError(
                f"{source}: balance of {raw_addr} must be an integer (wei), got {value!r}"
            ) from None
        if not 0 <= wei <= MAX_WEI:
            raise ConfigError(f"{source}: balance of {raw_addr} is outside [0, 10**38)")
        out[addr] = out.get(addr, 0) + wei
    return out


def load_genesis(
    job: AnalyticsJob, settings: Settings, environ: Mapping[str, str] | None = None
) -> dict[str, int]:
    """The job's genesis allocation. Raises ``ConfigError`` naming the file or pool var."""
    spec = job.spec.genesis
    if spec is None or spec.zero:
        return {}
    if spec.file:
        path = job.resolve_path(spec.file)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(
                f"job {job.job!r}: genesis file {str(path)!r} does not exist",
                field="analytics.genesis.file",
            ) from None
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"job {job.job!r}: genesis file {str(path)!r} is not readable JSON: {exc}",
                field="analytics.genesis.file",
            ) from None
        return parse_alloc(data, source=str(path))
    pool = spec.rpc_accounts
    assert pool is not None
    url = rpc_pool_url(pool, environ)
    if url is None:
        raise ConfigError(
            f"job {job.job!r}: genesis rpc_accounts pool {pool!r} has no URL",
            field=rpc_pool_env_var(pool),
        )
    with RpcClient(url, label=f"pool {pool}", timeout=settings.rpc_timeout_seconds) as rpc:
        accounts = [str(a).lower() for a in rpc.call("eth_accounts")]
        balances = rpc.batch([("eth_getBalance", [a, "0x0"]) for a in accounts])
    return {a: hex_int(b) for a, b in zip(accounts, balances, strict=True) if hex_int(b)}
