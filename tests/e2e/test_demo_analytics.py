"""``trace-lite demo --analytics --exit`` for real: a Monad-shaped archive anvil chain (a reward
minted every block, base fees out of supply) with staking events,
``dagster dev`` launching the sync and the analytics runs, and the three demos printed through
the Query Service, the supply checked against ``eth_getBalance`` over every account. The demo's
own job at 1,200 blocks instead of 2,000 (ranges of 300): still past the reward change at block
1,000, with four ranges per stream, in 40% fewer blocks to mine, trace and roll up."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_demo import _processes_of
from trace_core.settings import REPO_ROOT
from trace_lite.stack import free_port

TO_BLOCK = 1200


def job_yaml() -> str:
    """``examples/chain_sync.demo_analytics.yaml`` over ``[0, TO_BLOCK)`` in ranges of 300."""
    text = (REPO_ROOT / "examples" / "chain_sync.demo_analytics.yaml").read_text()
    for old, new, times in (
        ("to_block: 2000 ", f"to_block: {TO_BLOCK} ", 1),
        ("chunk_size: 500\n", "chunk_size: 300\n", 4),
        ("supply_window_blocks: 500\n", "supply_window_blocks: 300\n", 1),
        ("{from_block: 1000, block_reward_wei:", "{from_block: 1000, block_reward_wei:", 1),
    ):
        assert text.count(old) == times, old  # the example changed: update this test
        text = text.replace(old, new)
    return text


@pytest.mark.timeout(600)
def test_demo_analytics_prints_the_three_demos_and_the_supply_matches_the_chain(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    job = tmp_path / "demo_analytics.yaml"
    job.write_text(job_yaml())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACE_", "DAGSTER_"))}
    env |= {
        "TRACE_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "TRACE_QUERY_PORT": str(free_port("127.0.0.1")),
        "COLUMNS": "160",
    }
    argv = [str(Path(sys.executable).parent / "trace-lite"), "demo", "--analytics", "--exit"]
    argv += ["--file", str(job), "--port", str(free_port("127.0.0.1"))]
    done = subprocess.run(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=540
    )
    text = done.stdout.decode(errors="replace")
    assert done.returncode == 0, text[-4000:]
    for title in (
        "Demo 2: native supply by block",
        "Demo 3: top accounts now",
        "Demo 3: their balances at each synced range end",
        "Demo 4: stake per validator",
        "Demo 4: staking concentration over time",
    ):
        assert title in text, title
    verdict = re.search(r"supply at block (\d+): (\d+) wei (matches|differs from) the sum", text)
    assert verdict is not None, text[-4000:]
    assert verdict.group(3) == "matches", verdict.group(0)
    # the chain is Monad-shaped: every block's supply change is reward minted - base fee burned
    assert re.search(
        rf"Dagster check supply_reconciles passed: 0 of {TO_BLOCK} blocks unexplained", text
    ), text[-4000:]
    assert _processes_of(home) == []
