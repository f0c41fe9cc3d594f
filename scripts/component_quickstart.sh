#!/usr/bin/env bash
# From `pip install` to the first materialized range, as a Dagster user would, timed per step.
#
# Usage: scripts/component_quickstart.sh [WORKDIR]   (default /tmp/trace-component-quickstart)
# Env:   QUICKSTART_TIMEOUT  seconds to wait for the first materialized epoch (default 600)
#
# In WORKDIR: a fresh venv, `pip install` of this repository plus dagster-dg-cli, a minimal dg
# project, `dg scaffold defs trace_dagster.ChainSyncComponent my_chain`, an anvil chain from
# this repo's node_modules (make setup), `trace-lite migrate`, `dg dev` in the background; it waits until Dagster
# records the first materialized epoch of chain_sync/my_chain/blocks, prints the step times and
# stops everything it started (a trap on every exit path).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=$(realpath -m "${1:-/tmp/trace-component-quickstart}")
timeout_s=${QUICKSTART_TIMEOUT:-600}
anvil_bin=$repo/node_modules/.bin/anvil
anvil_pid= dg_pid=

cleanup() {
  if [[ -n $dg_pid ]]; then  # its own session: SIGINT the group, SIGKILL it after 20 s
    kill -INT -- "-$dg_pid" 2>/dev/null || true
    for _ in $(seq 40); do kill -0 "$dg_pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL -- "-$dg_pid" 2>/dev/null || true
  fi
  [[ -n $anvil_pid ]] && kill "$anvil_pid" 2>/dev/null && wait "$anvil_pid" 2>/dev/null || true
  [[ -x $work/.venv/bin/trace-lite ]] && TRACE_HOME=$work/.trace "$work/.venv/bin/trace-lite" down \
    >/dev/null 2>&1 || true
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
t0=$(date +%s)
step() { echo "$(($(date +%s) - t0)) s  $*"; }

rm -rf "$work" && mkdir -p "$work" && cd "$work"
python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet "$repo" "dagster-dg-cli==1.13.27"
step "pip install done"

mkdir -p src/chains/defs
cat >pyproject.toml <<'EOF'
[project]
name = "chains"
version = "0.1.0"
requires-python = ">=3.11"

[tool.dg]
directory_type = "project"

[tool.dg.project]
root_module = "chains"
EOF
touch src/chains/__init__.py src/chains/defs/__init__.py
cat >src/chains/definitions.py <<'EOF'
from pathlib import Path

from dagster import definitions, load_from_defs_folder


@definitions
def defs():
    return load_from_defs_folder(path_within_project=Path(__file__).parent)
EOF
export PATH=$work/.venv/bin:$PATH
dg scaffold defs trace_dagster.ChainSyncComponent my_chain \
  --json-params '{"datasets": ["blocks"], "to_block": 400, "chunk_size": 100, "epoch_blocks": 200}'
step "dg scaffold defs done"

port=$(free_port)
"$anvil_bin" --port "$port" --silent &
anvil_pid=$!
for _ in $(seq 50); do
  curl -s -X POST -H 'content-type: application/json' "http://127.0.0.1:$port" \
    --data '{"jsonrpc":"2.0","id":1,"method":"anvil_mine","params":["0x1f4"]}' >/dev/null && break
  sleep 0.2
done
export TRACE_RPC_POOL_DEMO_URL=http://127.0.0.1:$port TRACE_HOME=$work/.trace
export DAGSTER_HOME=$work/dagster_home
mkdir -p "$DAGSTER_HOME" && touch "$DAGSTER_HOME/dagster.yaml"
step "anvil up (500 blocks)"

# start the embedded Postgres and migrate it once, before Dagster's processes connect
trace-lite migrate
step "trace-lite migrate (embedded Postgres up)"

ui_port=$(free_port)
setsid dg dev --port "$ui_port" >"$work/dg-dev.log" 2>&1 &
dg_pid=$!
step "dg dev started (UI http://127.0.0.1:$ui_port)"

python - "$timeout_s" <<'EOF'
import sys, time
from dagster import AssetKey, DagsterInstance

deadline = time.monotonic() + float(sys.argv[1])
key = AssetKey(["chain_sync", "my_chain", "blocks"])
while time.monotonic() < deadline:
    with DagsterInstance.get() as instance:
        done = instance.get_materialized_partitions(key)
    if done:
        print(f"materialized: {sorted(done)}")
        sys.exit(0)
    time.sleep(2)
sys.exit("no materialized epoch before the timeout; see dg-dev.log")
EOF
step "first materialized range (epoch) recorded"
