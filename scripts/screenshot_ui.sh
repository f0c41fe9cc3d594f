#!/usr/bin/env bash
# Screenshot check of the Dagster UI's partitions view of the demo job's stream asset.
#
# Usage: scripts/screenshot_ui.sh [OUT.png]        (default ./ui-screenshot.png)
# Env:   SCREENSHOT_TRACE_HOME   Trace home of the demo run (default /tmp/trace-screenshot)
#        SCREENSHOT_TIMEOUT      seconds to wait for the demo to finish syncing (default 900)
#
# Runs `trace-lite demo` (not --exit) in the background on its own Trace home and in its own
# session (a Ctrl-C here reaches it once, through the trap), waits for it to finish the sync and
# for Dagster to report every partition of chain_sync/demo/blocks materialized and checks, through
# the GraphQL the pages load, what the view must show beside them (scripts/dagster_partitions.py
# --check: no failed partition, the integrity check's Partitions tab with passes, the
# dispatcher's tick message with the job's progress, the trace/sensors health checks passing).
# Then it screenshots the asset's partitions page (the last epoch's details open) and the
# integrity check's page with headless Chromium (installed from Debian's packages when
# missing), checks each is a PNG of the window's size and not blank, then stops the demo with
# SIGINT and waits for it to exit. A trap does the same on every exit path, so nothing is left
# running. The check's screenshot is written beside OUT.png as OUT-integrity.png.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=$(realpath -m "${1:-./ui-screenshot.png}")
trace_home=$(realpath -m "${SCREENSHOT_TRACE_HOME:-/tmp/trace-screenshot}")
timeout_s=${SCREENSHOT_TIMEOUT:-900}
asset_key=chain_sync/demo/blocks
log=$trace_home/demo.log
demo_pid=

log_tail() {
  echo "--- last lines of $log ---" >&2
  tail -n 30 "$log" >&2 || true
}

# SIGINT the demo (it stops dagster, the Query Service, anvil and Postgres), then wait for it;
# SIGTERM (handled the same way) if it ignores SIGINT for too long.
stop_demo() {
  [[ -n $demo_pid ]] || return 0
  local pid=$demo_pid signal waited
  demo_pid=
  for signal in INT TERM; do
    kill -s "$signal" "$pid" 2>/dev/null || break
    for ((waited = 0; waited < 120; waited++)); do
      kill -0 "$pid" 2>/dev/null || break 2
      sleep 1
    done
    echo "the demo (pid $pid) did not stop after SIG$signal" >&2
  done
  wait "$pid" 2>/dev/null || true
}
trap stop_demo EXIT
trap 'exit 130' INT TERM HUP

find_chromium() {
  command -v chromium || command -v chromium-browser || true
}

chromium_bin=$(find_chromium)
if [[ -z $chromium_bin ]]; then
  sudo=()
  [[ $EUID -eq 0 ]] || sudo=(sudo)
  echo "installing chromium from Debian's packages..."
  if ! "${sudo[@]}" apt-get install -y --no-install-recommends chromium; then
    "${sudo[@]}" apt-get update
    "${sudo[@]}" apt-get install -y --no-install-recommends chromium
  fi
  chromium_bin=$(find_chromium)
  [[ -n $chromium_bin ]] || { echo "chromium is still not on PATH" >&2; exit 1; }
fi

mkdir -p "$trace_home"
echo "starting trace-lite demo (TRACE_HOME=$trace_home, log $log)..."
(
  cd "$repo"
  export TRACE_HOME=$trace_home DAGSTER_HOME=$trace_home/dagster COLUMNS=200 PYTHONUNBUFFERED=1
  # This subshell leads no process group, so setsid execs in place: $! is the demo itself.
  exec setsid .venv/bin/trace-lite demo
) >"$log" 2>&1 &
demo_pid=$!

deadline=$((SECONDS + timeout_s))
until grep -q "running; press Ctrl-C" "$log"; do
  if ! kill -0 "$demo_pid" 2>/dev/null; then
    echo "the demo exited before finishing" >&2
    log_tail
    exit 1
  fi
  if ((SECONDS > deadline)); then
    echo "the demo did not finish within ${timeout_s}s" >&2
    log_tail
    exit 1
  fi
  sleep 2
done

ui=$(grep -o 'Dagster UI: http://[0-9.]*:[0-9]*' "$log" | tail -n 1 | cut -d' ' -f3)
[[ -n $ui ]] || { echo "no Dagster UI URL in $log" >&2; log_tail; exit 1; }
echo "demo synced; Dagster UI at $ui"

partition=$("$repo/.venv/bin/python" "$repo/scripts/dagster_partitions.py" "$ui" "$asset_key" \
  --timeout 300 --check)

# shot URL OUT: a screenshot of URL, checked to be a PNG of the window's size that is not blank
shot() {
  local url=$1 png=$2
  rm -f "$png"
  timeout 180 "$chromium_bin" --headless=new --no-sandbox --disable-gpu --hide-scrollbars \
    --user-data-dir="$trace_home/chromium" --window-size=1600,1000 \
    --virtual-time-budget=15000 --screenshot="$png" "$url" 2>>"$trace_home/chromium.log" || {
    echo "chromium failed; see $trace_home/chromium.log" >&2
    return 1
  }
  "$repo/.venv/bin/python" - "$png" <<'PY' || return 1
import struct, sys, zlib
path = sys.argv[1]
data = open(path, "rb").read()
if data[:8] != b"\x89PNG\r\n\x1a\n":
    sys.exit(f"{path}: not a PNG")
width, height = struct.unpack(">II", data[16:24])
if (width, height) != (1600, 1000):
    sys.exit(f"{path}: {width}x{height}, expected 1600x1000")
# a blank page compresses to almost nothing: the page must carry some detail
i, idat = 8, []
while i < len(data):
    (n,) = struct.unpack(">I", data[i : i + 4])
    if data[i + 4 : i + 8] == b"IDAT":
        idat.append(data[i + 8 : i + 8 + n])
    i += 12 + n
pixels = zlib.decompress(b"".join(idat))
if len(set(pixels[:: max(1, len(pixels) // 20000)])) < 8:
    sys.exit(f"{path}: the page looks blank")
print(f"{path}: {width}x{height}, {len(data)} bytes")
PY
}

shot "$ui/assets/$asset_key?view=partitions&partition=$partition" "$out" || exit 1
shot "$ui/assets/$asset_key?view=checks&checkDetail=integrity" "${out%.png}-integrity.png" || exit 1

echo "stopping the demo..."
stop_demo
echo "$out"
