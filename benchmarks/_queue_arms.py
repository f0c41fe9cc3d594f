"""``bench_queue.py --baseline-ref REF``: REF's trace_core and this tree's, side by side."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

ROW = re.compile(r"^(?P<phase>\S.{0,30}?)\s+(\d+)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d,]+)")


def _parse_table(out: str) -> dict[tuple[str, int, int], float]:
    """``(phase, batch, workers) -> per second`` from a run's printed table."""
    rates = {}
    for line in out.splitlines():
        m = ROW.match(line)
        if m and m["phase"].strip() != "phase":
            key = (m["phase"].strip(), int(m[2]), int(m[3]))
            rates[key] = float(m[6].replace(",", ""))
    return rates


def compare(
    ref: str,
    args: argparse.Namespace,
    home: Path,
    this_script: Path,
    targets: dict[tuple[str, int], int],
) -> None:
    """Interleave REF's code and this tree's, one repetition each in turn, on one server,
    both under ``this_script`` (or REF's own with ``--baseline-harness ref``)."""
    repo = this_script.parent.parent
    old = home / "baseline"
    old.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", ref, "trace_core", "benchmarks"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
    commit = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--short", ref],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    server = os.environ.get("TRACE_DATABASE_URL")
    if not server:
        from trace_core.db.embedded import embedded_server_uri

        server = embedded_server_uri(home / "pg", persistent=False)
    arms = {f"{ref} ({commit})": old, "this tree": repo}
    best: dict[str, dict[tuple[str, int, int], float]] = {a: {} for a in arms}
    loads = []
    flags = [
        f"--messages={args.messages}",
        f"--messages-single={args.messages_single}",
        f"--tasks={args.tasks}",
        "--repeat=1",
        f"--workers-as={args.workers_as}",
    ]
    for i in range(args.repeat):
        for arm, root in arms.items():
            env = {**os.environ, "PYTHONPATH": str(root), "TRACE_DATABASE_URL": server}
            probe = [sys.executable, "-c", "import trace_core; print(trace_core.__file__)"]
            where = subprocess.run(
                probe, env=env, cwd=root, check=True, capture_output=True, text=True
            )
            assert where.stdout.startswith(str(root)), f"{arm} imports {where.stdout}"
            load = os.getloadavg()[0]
            # the same harness for both arms unless asked (REF's own script may lack flags)
            script = root / "benchmarks" / "bench_queue.py"
            if args.baseline_harness == "this":
                script = this_script
            run = subprocess.run(
                [sys.executable, str(script), *(flags if script == this_script else flags[:4])],
                env=env,
                cwd=root,
                check=True,
                capture_output=True,
                text=True,
            )
            loads.append(load)
            print(f"# run {i + 1} {arm}: load {load:.2f}", flush=True)
            for key, rate in _parse_table(run.stdout).items():
                best[arm][key] = max(rate, best[arm].get(key, 0.0))
    base, mine = best.values()
    print(
        f"best of {args.repeat} per arm, arms interleaved, workers as {args.workers_as}, "
        f"{args.baseline_harness} tree's harness for {ref}; load average "
        f"{min(loads):.2f}-{max(loads):.2f} (2 cores, shared)"
    )
    names = list(arms)
    print(f"{'phase':<23}{'batch':>6}{'workers':>8}{names[0]:>22}{names[1]:>12}  ratio")
    for key in mine:
        phase, batch, workers = key
        b, m = base.get(key), mine[key]
        ratio = f"{m / b:5.2f}x" if b else ""
        target = targets.get((phase, batch))
        if target:
            ratio += f"; {m / target:5.2f}x target {target:,}"
        b_text = f"{b:,.0f}" if b else "-"
        print(f"{phase:<23}{batch:>6}{workers:>8}{b_text:>22}{m:>12,.0f}  {ratio}")
