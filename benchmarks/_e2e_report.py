"""bench_e2e.py's rows, targets and report: the tables it prints, and whether the issue's
targets were met (its exit status)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench_e2e import Plan

TARGETS = {"run --until-idle": 1.2, "up (launched runs)": 1.3}
TENTHS_TARGET = 0.8  # last tenth's ranges/s >= this x the first tenth's (jobs of >= 100 ranges)
AROUND_CRYO_TARGET = 0.050  # seconds per range around cryo (claim + attempt - cryo)
RECOVERY_SLACK_SECONDS = 10.0

CONDITION_ORDER = ("direct", "proxied")  # as bench_e2e runs them
# Leaves of an attempt's profile: what an attempt does around cryo (cryo itself excluded).
PROFILE_PHASES = (
    "claim", "token", "pool", "slot", "probe", "cryo", "checks", "bloom", "stage", "commit",
    "heartbeat stop",
)  # fmt: skip


@dataclass
class Row:
    path: str
    condition: str
    seconds: float
    runs: int | None = None
    first_claim: float | None = None  # seconds from apply to the first claim
    task_seconds: float | None = None  # mean seconds inside one succeeded attempt
    attempts: int | None = None
    requests: int | None = None  # HTTP requests through the proxy
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def conditions_of(rows: list[Row]) -> list[str]:
    """The conditions the rows were measured under, in the order the bench runs them."""
    return sorted({r.condition for r in rows}, key=CONDITION_ORDER.index)


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return (
        ""
        if value is None or (isinstance(value, float) and math.isnan(value))
        else format(value, spec)
    )


def _note(r: Row) -> str:
    others = r.extra.get("other_runs") or {}
    if not others:
        return r.note
    text = "other runs meanwhile: " + ", ".join(f"{n} {k}" for k, n in sorted(others.items()))
    return f"{r.note}; {text}" if r.note else text


def print_table(rows: list[Row], latency_ms: float) -> None:
    base = {r.condition: r.seconds for r in rows if r.path == "bare cryo (baseline)"}
    header = (
        f"{'path':<26}{'condition':<11}{'seconds':>9}{'vs cryo':>9}{'target':>12}{'runs':>6}"
        f"{'1st run':>8}{'launch s':>9}{'1st claim':>10}{'idle s':>8}{'par':>6}{'s/range':>9}"
        f"{'attempts':>9}{'requests':>10}  note"
    )
    print(header)
    print("-" * len(header))
    for condition in conditions_of(rows):
        for r in (r for r in rows if r.condition == condition):
            ratio = r.seconds / base[condition] if condition in base else None
            target = TARGETS.get(r.path)
            verdict = ""
            if target is not None and ratio is not None:
                verdict = f"<={target:g} " + ("ok" if ratio <= target else "MISS")
            cond = condition if condition == "direct" else f"+{latency_ms:g}ms"
            print(
                f"{r.path:<26}{cond:<11}{r.seconds:>9.2f}{_fmt(ratio):>9}{verdict:>12}"
                f"{_fmt(r.runs, 'd') if r.runs is not None else '':>6}"
                f"{_fmt(r.extra.get('to_first_run')):>8}{_fmt(r.extra.get('launch')):>9}"
                f"{_fmt(r.first_claim):>10}{_fmt(r.extra.get('idle')):>8}"
                f"{_fmt(r.extra.get('parallel'), '.1f'):>6}"
                f"{_fmt(r.task_seconds):>9}{_fmt(r.attempts, 'd') if r.attempts else '':>9}"
                f"{_fmt(r.requests, 'd') if r.requests is not None else '':>10}  {_note(r)}"
            )
        print("-" * len(header))
    print_profile(rows, latency_ms)
    for condition in conditions_of(rows):
        per_call = [
            r for r in rows if r.condition == condition and r.path == "cryo, 1 call per range"
        ]
        traced = [r for r in rows if r.condition == condition and r.task_seconds]
        if per_call and traced:
            cryo_range = per_call[0].seconds / per_call[0].extra["calls"]
            parts = ", ".join(f"{r.path} {r.task_seconds:.2f}s" for r in traced)
            print(
                f"per range ({condition}): one cryo call {cryo_range:.2f}s; a Trace attempt "
                f"(probe, cryo, checks, stage, commit): {parts}"
            )


def print_profile(rows: list[Row], latency_ms: float) -> None:
    """Where an attempt's time goes (ms per range, means over succeeded attempts), and the
    throughput of the first and last tenth of the commits."""
    profiled = [r for r in rows if r.extra.get("profile")]
    if not profiled:
        return
    cols = [*PROFILE_PHASES, "attempt", "around cryo"]
    header = f"{'path':<26}{'condition':<11}" + "".join(f"{c[:10]:>11}" for c in cols)
    header += f"{'run steps':>11}{'1st 10th':>9}{'last 10th':>10}{'ratio':>7}"
    print("\nper range, ms (TRACE_PROFILE_DIR; means over succeeded attempts):")
    print(header)
    print("-" * len(header))
    for r in profiled:
        prof = r.extra["profile"]
        steps = sum(v for k, v in (r.extra.get("run steps") or {}).items() if ": " not in k)
        cond = r.condition if r.condition == "direct" else f"+{latency_ms:g}ms"
        line = f"{r.path:<26}{cond:<11}" + "".join(
            f"{prof.get(c, 0.0) * 1000:>11.1f}" for c in cols
        )
        line += f"{steps * 1000:>11.1f}"
        tenths = r.extra.get("tenths")
        if tenths:
            first, last = tenths
            line += f"{first:>9.2f}{last:>10.2f}{last / first:>7.2f}"
        print(line)
    print(
        "around cryo = claim + attempt - cryo (target <= 50 ms); run steps = worker-run steps "
        "outside attempts (take more work on the run's thread, report on its reporter thread), "
        "per range, overlapping the attempts;\n"
        "1st/last 10th = ranges/s over the first and last tenth of the commits (target: last "
        ">= 0.8 x first)"
    )
    for r in profiled:
        split = r.extra.get("around cryo split")
        if split:
            wall = r.extra["profile"]["around cryo"]
            other = wall - split["cpu"] - split["runq"]
            print(
                f"  around cryo ({r.path}, {r.condition}): {wall * 1000:.1f} ms = CPU "
                f"{split['cpu'] * 1000:.1f} + waiting for a core {split['runq'] * 1000:.1f} + "
                f"waiting on I/O or the GIL {other * 1000:.1f}"
            )
        if r.extra.get("stream_ends"):
            ends = ", ".join(f"{key} {t:.1f}s" for key, t in r.extra["stream_ends"])
            first_par, last_par = r.extra["tenths_inflight"]
            print(
                f"  tail ({r.path}, {r.condition}): streams done after the first claim: {ends}; "
                f"attempts in flight: 1st 10th {first_par:.1f}, last 10th {last_par:.1f}"
            )
        if r.extra.get("run steps"):
            parts = ", ".join(f"{k} {v * 1000:.1f}" for k, v in r.extra["run steps"].items())
            print(f"  run steps ({r.path}, {r.condition}), ms per range: {parts}")


def report(
    rows: list[Row],
    timings: dict[str, float],
    recovery: dict[str, Any] | None,
    plan: Plan,
    latency_ms: float,
    load_before: float,
) -> None:
    print(
        f"\nload average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after "
        f"({os.cpu_count()} cores, shared); Trace seconds = apply -> last range committed"
    )
    print_table(rows, latency_ms)
    print(
        "1st run = apply -> first Dagster run created; launch s = mean run creation -> start; "
        "1st claim = apply -> first task claimed;\nidle s = seconds between apply and the last "
        "commit with no attempt running; par = mean attempts running while any is; s/range = mean "
        "seconds inside a succeeded attempt;\nrequests = HTTP requests through the proxy"
    )
    if timings:
        print("stack: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    if recovery:
        target = recovery["lease"] + RECOVERY_SLACK_SECONDS
        verdict = "ok" if recovery["seconds"] <= target else "MISS"
        print(
            f"recovery (+{latency_ms:g}ms): SIGKILL of `trace-lite run --until-idle` with "
            f"{recovery['committed_at_kill']}/{plan.total_ranges} ranges committed (tasks: "
            + ", ".join(f"{n} {k}" for k, n in sorted(recovery["tasks_at_kill"].items()))
            + "); restart -> "
            f"all committed {recovery['seconds']:.1f}s (process exit {recovery['exit_seconds']:.1f}s); "
            f"TRACE_LEASE_SECONDS={recovery['lease']}, TRACE_REWAKE_AFTER_SECONDS="
            f"{recovery['rewake']}; target <= lease + {RECOVERY_SLACK_SECONDS:g} = {target:g}s: "
            f"{verdict}"
        )


def targets_met(rows: list[Row], recovery: dict[str, Any] | None) -> bool:
    """The issue's targets: behind the proxy, each Trace path within its ratio of bare cryo,
    at most 50 ms around cryo per range, the last tenth of a long job at >= 0.8x the first
    tenth's throughput; recovery within lease + slack."""
    base = {r.condition: r.seconds for r in rows if r.path == "bare cryo (baseline)"}
    ok = all(
        r.seconds / base["proxied"] <= TARGETS[r.path]
        for r in rows
        if r.condition == "proxied" and r.path in TARGETS
    )
    for r in rows:
        tenths = r.extra.get("tenths")
        if r.condition == "proxied" and tenths and (r.attempts or 0) >= 100:
            ok = ok and tenths[1] >= TENTHS_TARGET * tenths[0]
        around = (r.extra.get("profile") or {}).get("around cryo")
        if r.condition == "proxied" and around is not None:
            ok = ok and around <= AROUND_CRYO_TARGET
    if recovery:
        ok = ok and recovery["seconds"] <= recovery["lease"] + RECOVERY_SLACK_SECONDS
    return ok
