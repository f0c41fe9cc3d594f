"""Where an attempt's time goes: per-phase wall seconds, written when ``TRACE_PROFILE_DIR`` is set.

Off by default, and then every call here is a dictionary lookup at most. When the variable
names a directory, each process appends JSON lines to ``{dir}/profile-{pid}.jsonl``:

- one ``{"kind": "attempt", "task_id", "attempt", "phases": {name: seconds}, "cpu": {...},
  "runq": {...}, ...}`` per attempt a worker ran (claim, token, pool, probe, slot, cryo,
  checks, bloom, stage, commit, report ...), written when the attempt ends;
- one ``{"kind": "run", "phase", "seconds", "cpu", "runq", ...}`` per step a worker run takes
  outside any attempt (taking more work: plan, receive, ack; the wait for a free thread ...).

What a phase's wall seconds were: ``cpu``, the timing thread's own CPU time
(``time.thread_time``: a subprocess's, cryo's, is not in it), and ``runq``, the time that
thread was runnable but waited for a core (Linux ``/proc/self/task/<tid>/schedstat``; 0
elsewhere). The rest is waiting: on I/O (Postgres, fsync, a subprocess) or for the GIL.

Phases nest by name only: a phase timed inside another is counted in both (``cryo`` inside
``extract``), so a reader sums the leaves it chooses. The benchmarks read these files
(``benchmarks/bench_e2e.py``, ``bench_ingest.py``); the process that runs an attempt need not
be the one that reads them (launched Dagster runs inherit the variable).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ENV = "TRACE_PROFILE_DIR"

_local = threading.local()
_lock = threading.Lock()
_open: dict[uuid.UUID, dict[str, Any]] = {}


def enabled() -> bool:
    return bool(os.environ.get(ENV))


def _write(record: dict[str, Any]) -> None:
    directory = os.environ.get(ENV)
    if not directory:
        return
    line = json.dumps(record, default=str) + "\n"
    path = Path(directory) / f"profile-{os.getpid()}.jsonl"
    with _lock:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as fh:
            fh.write(line)


def _runq() -> float:
    """Seconds this thread has waited for a core, runnable (0.0 where Linux does not say)."""
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/schedstat") as fh:
            return int(fh.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def _now() -> tuple[float, float, float]:
    """(wall, this thread's CPU, its run-queue wait) in seconds, to subtract later."""
    return time.perf_counter(), time.thread_time(), _runq()


def _since(t0: tuple[float, float, float]) -> tuple[float, float, float]:
    return tuple(b - a for a, b in zip(t0, _now(), strict=True))  # type: ignore[return-value]


def add(
    task_id: uuid.UUID | None,
    phase: str,
    seconds: float,
    cpu: float | None = None,
    runq: float | None = None,
) -> None:
    """Add ``seconds`` (of which ``cpu`` on a core, ``runq`` waiting for one) to ``phase`` of
    ``task_id``'s open attempt (or the current thread's)."""
    if not enabled():
        return
    task_id = task_id or getattr(_local, "task_id", None)
    if task_id is None:
        return
    with _lock:
        record = _open.setdefault(task_id, {"phases": {}, "cpu": {}, "runq": {}})
        for key, value in (("phases", seconds), ("cpu", cpu), ("runq", runq)):
            if value is not None:
                sums = record[key]
                sums[phase] = sums.get(phase, 0.0) + value


@contextlib.contextmanager
def phase(name: str, task_id: uuid.UUID | None = None) -> Iterator[None]:
    """Time the block as ``name`` of the current attempt (``task_id``, else the thread's)."""
    if not enabled():
        yield
        return
    t0 = _now()
    try:
        yield
    finally:
        add(task_id, name, *_since(t0))


@contextlib.contextmanager
def attempt(task_id: uuid.UUID, attempt_no: int, **fields: Any) -> Iterator[None]:
    """Make ``task_id`` the current thread's attempt; write its record when the block ends."""
    if not enabled():
        yield
        return
    previous = getattr(_local, "task_id", None)
    _local.task_id = task_id
    t0 = _now()
    try:
        yield
    finally:
        _local.task_id = previous
        total, cpu, runq = _since(t0)
        finish(task_id, attempt_no, total=total, total_cpu=cpu, total_runq=runq, **fields)


def finish(task_id: uuid.UUID, attempt_no: int, **fields: Any) -> None:
    """Write ``task_id``'s record (phases gathered so far) and forget it."""
    if not enabled():
        return
    with _lock:
        record = _open.pop(task_id, {"phases": {}, "cpu": {}, "runq": {}})
    _write(
        {
            "kind": "attempt",
            "task_id": str(task_id),
            "attempt": attempt_no,
            "pid": os.getpid(),
            "at": time.time(),
            **record,
            **fields,
        }
    )


@contextlib.contextmanager
def run_phase(name: str, **fields: Any) -> Iterator[None]:
    """Time a worker run's step outside any attempt (written as its own line)."""
    if not enabled():
        yield
        return
    t0 = _now()
    try:
        yield
    finally:
        seconds, cpu, runq = _since(t0)
        _write(
            {
                "kind": "run",
                "phase": name,
                "seconds": seconds,
                "cpu": cpu,
                "runq": runq,
                "pid": os.getpid(),
                "at": time.time(),
                **fields,
            }
        )


def read(directory: Path) -> list[dict[str, Any]]:
    """Every record under ``directory`` (all processes)."""
    out: list[dict[str, Any]] = []
    for path in sorted(directory.glob("profile-*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                out.append(json.loads(line))
    return out
