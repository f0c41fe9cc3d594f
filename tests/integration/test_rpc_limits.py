"""Per-RPC-pool limits: extraction slots in Postgres state (across runs and machines) and
each extraction's share of the pool's request rate."""

from __future__ import annotations

import threading
import time
import uuid
from contextlib import ExitStack

import pytest

from tests.integration.test_cryo_ingest import POOL, _payload
from trace_core.engine.execute import execute_batch
from trace_core.errors import ConfigError
from trace_core.operators.cryo_payload import CryoIngestTask, cryo_kwargs
from trace_core.rpc.limits import PoolLimits, extraction_slot, held_slots, pool_limits
from trace_core.runtime import Runtime
from trace_core.tasks import claim, create_task
from trace_core.tasks.lifecycle import Lease
from trace_lite.devtools.devchain import DevChain


class NoSlot(Exception):
    pass


def _no_wait() -> None:
    raise NoSlot


def _leases(rt: Runtime, n: int, lease_seconds: float = 30) -> list[Lease]:
    out = []
    with rt.state() as conn, conn.transaction():
        for _ in range(n):
            tid = uuid.uuid4()
            create_task(conn, task_id=tid, operator="noop", payload={})
            out.append(claim(conn, tid, lease_seconds=lease_seconds))
    return out


def test_limits_come_from_the_pools_env_vars_and_bad_values_name_them() -> None:
    assert pool_limits("main", {}) == PoolLimits()
    limits = pool_limits(
        "main-net",
        {
            "TRACE_RPC_POOL_MAIN_NET_MAX_CONCURRENT": "3",
            "TRACE_RPC_POOL_MAIN_NET_REQUESTS_PER_SECOND": "90",
        },
    )
    assert limits == PoolLimits(3, 90.0) and limits.share_per_extraction == 30.0
    # a rate alone still bounds the total: it is split over the default slot count
    assert pool_limits("p", {"TRACE_RPC_POOL_P_REQUESTS_PER_SECOND": "40"}) == PoolLimits(4, 40.0)
    for var, value in (
        ("TRACE_RPC_POOL_P_MAX_CONCURRENT", "two"),
        ("TRACE_RPC_POOL_P_MAX_CONCURRENT", "0"),
        ("TRACE_RPC_POOL_P_REQUESTS_PER_SECOND", "-1"),
        ("TRACE_RPC_POOL_P_REQUESTS_PER_SECOND", "fast"),
    ):
        with pytest.raises(ConfigError) as err:
            pool_limits("p", {var: value})
        assert err.value.field == var


def test_each_extraction_gets_its_share_of_the_rate() -> None:
    p = CryoIngestTask.parse(
        _payload("blocks", 0, 100, cryo_options={"requests_per_second": 10}),
        org_id="00000000-0000-0000-0000-000000000001",
    )
    assert cryo_kwargs(p, None)["requests_per_second"] == 10  # the stream's own option
    assert cryo_kwargs(p, 4.5)["requests_per_second"] == 4  # the pool's share is lower
    assert cryo_kwargs(p, 25.0)["requests_per_second"] == 10  # the stream's is lower
    assert cryo_kwargs(p, 0.2)["requests_per_second"] == 1  # never zero


def test_slots_bound_extractions_across_holders(trace_env: Runtime) -> None:
    rt = trace_env
    a, b, c = _leases(rt, 3)
    limits = PoolLimits(max_concurrent=2)
    with ExitStack() as held:
        for lease in (a, b):
            assert held.enter_context(
                extraction_slot(rt.state, POOL, lease, limits, check=_no_wait)
            ) in (0, 1)
        assert held_slots(rt.state, POOL) == 2
        # a third holder finds no free slot
        with pytest.raises(NoSlot), extraction_slot(rt.state, POOL, c, limits, check=_no_wait):
            pass
    # released: the third gets one
    with extraction_slot(rt.state, POOL, c, limits, check=_no_wait) as slot:
        assert slot == 0 and held_slots(rt.state, POOL) == 1


def test_a_dead_attempts_slot_is_free_once_its_lease_lapses(trace_env: Runtime) -> None:
    rt = trace_env
    (dead,) = _leases(rt, 1, lease_seconds=1)
    (live,) = _leases(rt, 1)
    limits = PoolLimits(max_concurrent=1)
    leaked = extraction_slot(rt.state, POOL, dead, limits, check=_no_wait)
    leaked.__enter__()  # its worker is killed: never released
    with pytest.raises(NoSlot), extraction_slot(rt.state, POOL, live, limits, check=_no_wait):
        pass
    deadline = time.monotonic() + 15

    def until_deadline() -> None:
        assert time.monotonic() < deadline, "the dead attempt's slot was never freed"

    with extraction_slot(
        rt.state, POOL, live, limits, check=until_deadline, poll_seconds=0.1
    ) as slot:
        assert slot == 0


def test_worker_pool_respects_the_pools_limit_with_real_cryo(
    trace_env: Runtime, anvil_chain: DevChain, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four ranges, a worker pool of four, a pool limited to one extraction at a time: all
    commit, and no sample of the slot table ever shows two holders."""
    monkeypatch.setenv("TRACE_RPC_POOL_ANVIL_URL", anvil_chain.rpc_url)
    monkeypatch.setenv("TRACE_RPC_POOL_ANVIL_MAX_CONCURRENT", "1")
    rt = trace_env
    ids = []
    with rt.state() as conn, conn.transaction():
        for start in range(0, 800, 200):
            tid = uuid.uuid4()
            create_task(
                conn,
                task_id=tid,
                operator="cryo_ingest",
                payload=_payload("blocks", start, start + 200),
            )
            ids.append(tid)
    most = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            most[0] = max(most[0], held_slots(rt.state, POOL))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        outcomes = list(execute_batch(rt, ids, concurrency=4))
    finally:
        done.set()
        sampler.join()
    assert [o.status for o in outcomes] == ["succeeded"] * 4, [o.error for o in outcomes]
    assert sum(o.outputs["row_count"] for o in outcomes) == 800
    assert most[0] == 1
