"""The local UDF sandbox: warm-call latency and throughput, a 1M-row transform against the same
computation in process, and how fast a runaway UDF is killed.

- latency: one caller, a trivial function (``return x``), sequential warm calls; p50/p99.
- throughput: ``--threads`` callers (default 2, the box's cores) on a pool of as many warm
  workers, for ``--seconds``; calls/s.
- transform: ERC-20-like transfers, 1M rows, two computations: volume and count per
  (token id, day) (light: ~20 ms of CPU in process), and daily active senders per token
  (count_distinct over 20-byte addresses, grouped by 20-byte token address and day), through
  the sandbox (Arrow IPC handed over as a mapped file, fork, seccomp, rlimits) against
  the same UDF called in this process on the same IPC bytes (decode, call, encode): the
  "in process without the sandbox" baseline, measured in the same run, alternating order,
  median of ``--repeat``.
- runaway: ``while True: pass`` under a 1 s wall limit, and under a 1 s CPU limit; how long
  past its limit the call took to fail.

Targets (issue 21): p50 <= 5 ms, p99 <= 15 ms, >= 200 calls/s on 2 cores, transform <= 1.3x
in process, runaway killed within its limit + 100 ms.

Run: .venv/bin/python benchmarks/bench_udf.py [--calls N] [--seconds S] [--rows N] [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import threading
import time

import pyarrow as pa
import pyarrow.compute as pc

from trace_core.errors import UdfError
from trace_core.udf import LocalSandboxInvoker, UdfInvocationPayload, UdfLimits

TRIVIAL = "def main(x):\n    return x\n"
TRANSFORM = """
import pyarrow.compute as pc

def main(tables):
    t = tables['transfers']
    t = t.filter(pc.greater(t['amount'], 0))
    return t.group_by(['token', 'day']).aggregate([('amount', 'sum'), ('amount', 'count')])
"""
ACTIVE = """
def main(tables):
    t = tables['transfers']
    return t.group_by(['token', 'day']).aggregate([('amount', 'sum'), ('sender', 'count_distinct')])
"""
RUNAWAY = "def main(x):\n    while True:\n        pass\n"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency(inv: LocalSandboxInvoker, calls: int) -> list[float]:
    payload = UdfInvocationPayload(source=TRIVIAL, input=1)
    for _ in range(50):
        inv.invoke(payload)
    out = []
    for i in range(calls):
        t, c = time.perf_counter(), time.process_time()
        res = inv.invoke(UdfInvocationPayload(source=TRIVIAL, input=i))
        out.append((time.perf_counter() - t) * 1000)
        CALL_CPU.append((time.process_time() - c) * 1000 + res.stats.cpu_ms)
        assert res.value == i
    return out


CALL_CPU: list[float] = []


def throughput(inv: LocalSandboxInvoker, threads: int, seconds: float) -> float:
    done = [0] * threads
    stop = time.monotonic() + seconds

    def caller(k: int) -> None:
        payload = UdfInvocationPayload(source=TRIVIAL, input=k)
        while time.monotonic() < stop:
            inv.invoke(payload)
            done[k] += 1

    workers = [threading.Thread(target=caller, args=(k,)) for k in range(threads)]
    t0 = time.monotonic()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(done) / (time.monotonic() - t0)


def transfers(rows: int, addresses: bool = False) -> bytes:
    """ERC-20-like transfers: int token ids, or (``addresses``) 20-byte token and sender
    addresses (1,000 tokens, 50,000 senders), deterministic."""
    idx = pa.array(range(rows), pa.int64())
    cols = {
        "token": pc.cast(pc.bit_wise_and(pc.multiply(idx, 7919), 1023), pa.int32()),
        "day": pc.cast(pc.divide(idx, rows // 30 or 1), pa.int32()),
        "amount": pc.subtract(pc.bit_wise_and(pc.multiply(idx, 104729), 1_048_575), 1000),
    }
    if addresses:
        rnd = random.Random(7)
        tokens = [rnd.randbytes(20) for _ in range(1000)]
        senders = [rnd.randbytes(20) for _ in range(50_000)]
        cols["token"] = _fixed20(b"".join(tokens[(i * 7919) % 1000] for i in range(rows)), rows)
        cols["sender"] = _fixed20(b"".join(rnd.choice(senders) for _ in range(rows)), rows)
    table = pa.table(cols)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table, max_chunksize=64 * 1024)
    return sink.getvalue().to_pybytes()


def _fixed20(data: bytes, rows: int) -> pa.Array:
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(20), rows, [None, pa.py_buffer(data)])


def in_process(data: bytes, source: str = TRANSFORM) -> bytes:
    """The baseline: the same UDF on the same IPC bytes, in this process, no sandbox."""
    scope: dict[str, object] = {}
    exec(compile(source, "udf.py", "exec"), scope)
    tables = {"transfers": pa.ipc.open_stream(pa.py_buffer(data)).read_all()}
    out = scope["main"](tables)  # type: ignore[operator]
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, out.schema) as w:
        w.write_table(out)
    return sink.getvalue().to_pybytes()


def transform(
    inv: LocalSandboxInvoker, rows: int, repeat: int, source: str, addresses: bool
) -> tuple[float, float, float, int]:
    """Medians of (warm sandbox, fresh sandbox, in process) over ``repeat`` rounds, the three
    arms in rotating order. Warm: the payload's ``reuse_scope`` lets consecutive calls run in
    one kept process (a transform job's ranges do); fresh: a new forked process per call."""
    data = transfers(rows, addresses)

    def payload(scope: str | None) -> UdfInvocationPayload:
        return UdfInvocationPayload(
            kind="transform",
            source=source,
            tables={"transfers": data},
            limits=UdfLimits(memory_mb=1024, max_output_bytes=256 << 20),
            reuse_scope=scope,
        )

    warm_p, fresh_p = payload(f"bench/{hash(source)}"), payload(None)
    expect = pa.ipc.open_stream(in_process(data, source)).read_all()
    order = [("token", "ascending"), ("day", "ascending")]
    for p in (warm_p, fresh_p):
        got = pa.ipc.open_stream(inv.invoke(p).table).read_all()
        assert got.sort_by(order).equals(expect.sort_by(order))
    times: dict[str, list[float]] = {"w": [], "f": [], "b": []}
    cpu: dict[str, list[float]] = {"w": [], "f": [], "b": []}
    arms = ["w", "f", "b"]
    for i in range(repeat):
        for which in arms[i % 3 :] + arms[: i % 3]:
            t, c = time.perf_counter(), time.process_time()
            own = 0.0
            if which == "b":
                in_process(data, source)
            else:
                own = inv.invoke(warm_p if which == "w" else fresh_p).stats.cpu_ms / 1000
            times[which].append(time.perf_counter() - t)
            cpu[which].append(time.process_time() - c + own)
    CPU[source] = (statistics.median(cpu["w"]), statistics.median(cpu["b"]))
    med = {k: statistics.median(v) for k, v in times.items()}
    return med["w"], med["f"], med["b"], len(data)


#: source -> (sandbox CPU s: this process + the call's own, in-process CPU s), medians
CPU: dict[str, tuple[float, float]] = {}


def runaway(inv: LocalSandboxInvoker, limits: UdfLimits, cause: str) -> float:
    t = time.perf_counter()
    try:
        inv.invoke(UdfInvocationPayload(source=RUNAWAY, limits=limits))
    except UdfError as exc:
        assert exc.cause == cause, exc
    else:
        raise AssertionError("the runaway UDF returned")
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()

    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    with LocalSandboxInvoker(pool_size=max(2, args.threads)) as inv:
        t = time.perf_counter()
        inv.start()
        start_ms = (time.perf_counter() - t) * 1000
        lat = latency(inv, args.calls)
        rate = throughput(inv, args.threads, args.seconds)
        sand, fresh, base, nbytes = transform(inv, args.rows, args.repeat, TRANSFORM, False)
        sand2, fresh2, base2, nbytes2 = transform(inv, args.rows, args.repeat, ACTIVE, True)
        wall = runaway(inv, UdfLimits(wall_seconds=1.0, cpu_seconds=30), "wall_time")
        cpu = runaway(inv, UdfLimits(wall_seconds=30.0, cpu_seconds=1), "cpu_time")

    p50, p99 = pct(lat, 0.50), pct(lat, 0.99)
    rows = [
        ("pool start (workers)", f"{start_ms:.0f} ms", "", ""),
        ("warm trivial call p50", f"{p50:.2f} ms", "<= 5 ms", "ok" if p50 <= 5 else "MISSED"),
        ("warm trivial call p99", f"{p99:.2f} ms", "<= 15 ms", "ok" if p99 <= 15 else "MISSED"),
        (
            f"throughput, {args.threads} callers",
            f"{rate:.0f} calls/s",
            ">= 200/s",
            "ok" if rate >= 200 else "MISSED",
        ),
        (
            f"volume/token/day {args.rows:,} rows, in process",
            f"{base * 1000:.0f} ms",
            "baseline",
            "",
        ),
        (
            f"volume/token/day {args.rows:,} rows, sandbox warm",
            f"{sand * 1000:.0f} ms",
            "<= 1.3x",
            f"{sand / base:.2f}x " + ("ok" if sand / base <= 1.3 else "MISSED"),
        ),
        (
            "  same, sandbox fresh process per call",
            f"{fresh * 1000:.0f} ms",
            "info",
            f"{fresh / base:.2f}x",
        ),
        (
            f"active senders {args.rows:,} rows, in process",
            f"{base2 * 1000:.0f} ms",
            "baseline",
            "",
        ),
        (
            f"active senders {args.rows:,} rows, sandbox warm",
            f"{sand2 * 1000:.0f} ms",
            "<= 1.3x",
            f"{sand2 / base2:.2f}x " + ("ok" if sand2 / base2 <= 1.3 else "MISSED"),
        ),
        (
            "  same, sandbox fresh process per call",
            f"{fresh2 * 1000:.0f} ms",
            "info",
            f"{fresh2 / base2:.2f}x",
        ),
        (
            "runaway, 1 s wall limit",
            f"{wall * 1000:.0f} ms",
            "<= 1100 ms",
            f"+{(wall - 1) * 1000:.0f} ms " + ("ok" if wall <= 1.1 else "MISSED"),
        ),
        ("runaway, 1 s CPU limit (wall time to fail)", f"{cpu * 1000:.0f} ms", "info", ""),
        (
            "CPU: host + warm call / in process, volume",
            f"{CPU[TRANSFORM][0] * 1000:.0f}/{CPU[TRANSFORM][1] * 1000:.0f} ms",
            "info",
            f"{CPU[TRANSFORM][0] / CPU[TRANSFORM][1]:.2f}x",
        ),
        (
            "CPU: host + warm call / in process, senders",
            f"{CPU[ACTIVE][0] * 1000:.0f}/{CPU[ACTIVE][1] * 1000:.0f} ms",
            "info",
            f"{CPU[ACTIVE][0] / CPU[ACTIVE][1]:.2f}x",
        ),
        ("CPU per warm trivial call (host + call) p50", f"{pct(CALL_CPU, 0.5):.2f} ms", "info", ""),
    ]
    print(
        f"inputs {nbytes / 1e6:.1f} MB / {nbytes2 / 1e6:.1f} MB Arrow IPC; "
        f"load average after: {os.getloadavg()[0]:.2f}"
    )
    print(f"| {'measure':<44} | {'value':>12} | {'target':>10} | {'':>12} |")
    print(f"|{'-' * 46}|{'-' * 14}:|{'-' * 11}:|{'-' * 13}:|")
    for name, value, target, verdict in rows:
        print(f"| {name:<44} | {value:>12} | {target:>10} | {verdict:>12} |")


if __name__ == "__main__":
    main()
