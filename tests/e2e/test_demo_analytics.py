"""``trace-lite demo --analytics --exit`` for real: a Monad-shaped archive anvil chain (a reward
minted every block, base fees out of supply) with staking events,
``dagster dev`` launching the sync and the analytics runs, and the three demos printed through
the Query Service, the supply checked against ``eth_getBalance`` over every account."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_demo import _processes_of
from trace_lite.stack import free_port


@pytest.mark.timeout(600)
def test_demo_analytics_prints_the_three_demos_and_the_supply_matches_the_chain(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACE_", "DAGSTER_"))}
    env |= {
        "TRACE_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "TRACE_QUERY_PORT": str(free_port("127.0.0.1")),
        "COLUMNS": "160",
    }
    argv = [str(Path(sys.executable).parent / "trace-lite"), "demo", "--analytics", "--exit"]
    argv += ["--port", str(free_port("127.0.0.1"))]
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
        r"Dagster check supply_reconciles passed: 0 of 2000 blocks unexplained", text
    ), text[-4000:]
    assert _processes_of(home) == []
