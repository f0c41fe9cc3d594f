"""The pool's pre-extraction check honours ``Retry-After`` (docs/rpc_pools.md): a lone
endpoint answering 429 with ``Retry-After: 1`` and serving the retry a second later is not
"unreachable", and the range commits on that attempt. Real cryo against the session anvil
chain behind the fault proxy, real Postgres."""

from __future__ import annotations

import pytest

from tests.integration.test_cryo_ingest import ENV_VAR, _claim, _connector, _payload
from tests.integration.test_rpc_pools import real_settings, store  # noqa: F401 - fixtures
from trace_core.db.connection import Databases
from trace_core.errors import RpcError
from trace_core.operators.cryo_ingest import run_cryo_ingest
from trace_core.rpc.pool import RpcPool
from trace_core.settings import Settings
from trace_core.storage import LocalStore
from trace_lite.devtools.devchain import DevChain
from trace_lite.devtools.rpcproxy import FaultProxy


def test_a_429_on_the_probe_is_waited_out_and_the_range_commits(
    real_settings: Settings,  # noqa: F811
    store: LocalStore,  # noqa: F811
    dbs: Databases,
    anvil_chain: DevChain,
) -> None:
    with FaultProxy(anvil_chain.rpc_url) as proxy:
        proxy.faults.rate_limit, proxy.faults.retry_after = 1, 1.0
        proxy.faults.fault_methods = {"eth_chainId"}  # the check's first call
        result = run_cryo_ingest(
            real_settings,
            store,
            _claim(dbs, _payload("blocks", 0, 100)),
            state=_connector(dbs),
            environ={ENV_VAR: proxy.url},
        )
        assert proxy.hits["rate_limit"] == 1  # the 429 really came, and was waited out
        assert result.rows == 100
        assert proxy.methods["eth_chainId"] >= 2


def test_a_retry_after_past_the_cap_is_still_a_clear_error(
    settings: Settings, anvil_chain: DevChain
) -> None:
    with FaultProxy(anvil_chain.rpc_url) as proxy:
        proxy.faults.rate_limit, proxy.faults.retry_after = 1, 600.0
        naps: list[float] = []
        with RpcPool.from_env("anvil", settings, {ENV_VAR: proxy.url}) as pool:
            pool._sleep = naps.append  # type: ignore[method-assign]  # no real wait expected
            with pytest.raises(RpcError) as info:
                pool.check(anvil_chain.chain_id)
        assert naps == []  # longer than rpc_max_retry_after_seconds: not waited for
        assert "429" in info.value.message or "rate" in info.value.message.lower()
        assert proxy.url not in info.value.message
