"""bench_scale.py ``--growth``: the cost per range as one stream grows from 1k to 100k ranges,
through the daemon path (``trace-lite up``: dagster dev's daemon runs the dispatcher and worker
sensors, the default run launcher starts a process per run, the Query Service runs beside).

Per stage N (e.g. 1,000, 10,000, 100,000 ranges): the job's ``to_block`` is raised to N
ranges; the ranges up to N - ``tail`` are **planned and committed in bulk** as state rows
(range, task, attempt and dataset-version rows in one statement; no Parquet: their cost is the
state they leave behind, which is what later ranges pay for), and the last ``tail`` ranges go
through the daemon path with explicitly fake extraction (``TRACE_CRYO_MODE=fake``). Each stage
reports the tail's ranges per second, its time per range by phase (from state timestamps),
``trace-lite status`` wall time (the CLI process) and the status query alone, Postgres state
size, Dagster partitions, and the memory of every process of the stack (sampled while the tail
runs: VmHWM of the long-lived ones, the peak seen of run processes).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

TRACE_LITE = str(Path(sys.executable).with_name("trace-lite"))

# bulk history: range rows + succeeded tasks + their attempt + dataset versions
BULK_SQL = [
    """
CREATE TEMP TABLE bulk_r ON COMMIT DROP AS
SELECT g * %(chunk)s AS a, LEAST((g + 1) * %(chunk)s, %(end)s) AS b,
       gen_random_uuid() AS v, gen_random_uuid() AS t
FROM generate_series(%(start)s / %(chunk)s, (%(end)s - 1) / %(chunk)s) AS g
""",
    """
CREATE TEMP TABLE bulk_s ON COMMIT DROP AS
SELECT s.job_id, s.dataset_key, s.dataset_uuid, s.config_hash
FROM state.chain_sync_streams s JOIN state.chain_sync_jobs j USING (job_id)
WHERE j.name = %(job)s AND s.dataset_key = %(stream)s
""",
    """
INSERT INTO state.dataset_versions (
    dataset_version, dataset_uuid, chain_id, range_start, range_end, config_hash,
    schema_hash, storage_prefix, manifest_key, row_count, bytes, file_count, task_id,
    attempt, fake)
SELECT r.v, s.dataset_uuid, %(chain)s, r.a, r.b, s.config_hash, 'bench_scale',
       'bench/' || r.a || '/', 'bench/' || r.a || '/manifest.json', r.b - r.a, 0, 0, r.t,
       1, true
FROM bulk_r r, bulk_s s
""",
    """
INSERT INTO state.tasks (task_id, operator, status, attempt, payload, job_id, outputs,
                         started_at, finished_at)
SELECT r.t, 'cryo_ingest', 'succeeded', 1,
       jsonb_build_object('dataset_key', s.dataset_key, 'range_start', r.a,
                          'range_end', r.b, 'bench', true),
       s.job_id, jsonb_build_object('dataset_version', r.v), now(), now()
FROM bulk_r r, bulk_s s
""",
    """
INSERT INTO state.task_attempts (task_id, attempt, finished_at, outcome)
SELECT r.t, 1, now(), 'succeeded' FROM bulk_r r
""",
    """
INSERT INTO state.chain_sync_scheduled_ranges (
    job_id, dataset_key, range_start, range_end, task_id, status, dataset_version, completed_at,
    fake)
SELECT s.job_id, s.dataset_key, r.a, r.b, r.t, 'completed', r.v, now(), true
FROM bulk_r r, bulk_s s
""",
]

CURSOR_SQL = """
UPDATE state.chain_sync_cursor c SET next_block = %(end)s FROM state.chain_sync_jobs j
WHERE j.job_id = c.job_id AND j.name = %(job)s AND c.dataset_key = %(stream)s
"""

CURSOR_GET_SQL = """
SELECT c.next_block FROM state.chain_sync_cursor c JOIN state.chain_sync_jobs j USING (job_id)
WHERE j.name = %(job)s AND c.dataset_key = %(stream)s
"""

PROGRESS_SQL = """
SELECT count(*) FILTER (WHERE r.status = 'completed'), count(*) FILTER (WHERE r.status = 'dead'),
       c.next_block
FROM state.chain_sync_jobs j
JOIN state.chain_sync_cursor c ON c.job_id = j.job_id AND c.dataset_key = %(stream)s
LEFT JOIN state.chain_sync_scheduled_ranges r ON r.job_id = j.job_id
WHERE j.name = %(job)s
GROUP BY c.next_block
"""

# per tail range: planned -> first claim (dispatch + wake-up + run launch), first claim ->
# attempt end (extraction, checks, staging, commit), attempt end -> range completed
PHASES_SQL = """
SELECT EXTRACT(EPOCH FROM a.started_at - r.created_at)::float8,
       EXTRACT(EPOCH FROM a.finished_at - a.started_at)::float8,
       EXTRACT(EPOCH FROM r.completed_at - a.finished_at)::float8,
       EXTRACT(EPOCH FROM r.created_at)::float8, EXTRACT(EPOCH FROM r.completed_at)::float8
FROM state.chain_sync_scheduled_ranges r
JOIN state.chain_sync_jobs j ON j.job_id = r.job_id
JOIN state.task_attempts a ON a.task_id = r.task_id AND a.outcome = 'succeeded'
WHERE j.name = %(job)s AND r.status = 'completed' AND r.range_start >= %(start)s
"""

SIZE_SQL = """
SELECT pg_database_size(current_database()),
       (SELECT count(*) FROM state.chain_sync_scheduled_ranges),
       (SELECT count(*) FROM state.dataset_versions),
       (SELECT count(*) FROM state.tasks),
       (SELECT count(*) FROM state.outbox)
"""


@dataclass
class Stage:
    ranges: int
    tail: int
    bulk_s: float = 0.0
    sync_s: float = 0.0  # the bulk's epochs into Dagster (partitions + materializations)
    tail_s: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)
    status_cli_s: list[float] = field(default_factory=list)
    status_query_s: list[float] = field(default_factory=list)
    db_bytes: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    partitions: int = 0
    memory: dict[str, tuple[int, int]] = field(default_factory=dict)  # role -> (hwm, rss) kB

    @property
    def per_range_s(self) -> float:
        return self.tail_s / self.tail if self.tail else float("nan")


def bulk(rt: Any, path: Path, job: str, stream: str, chunk: int, chain: int, end: int) -> float:
    """Apply the job file and, in the same transaction, commit its ranges from the cursor to
    ``end`` (blocks) in bulk and move the cursor past them (the dispatcher never sees the
    bulk part as unplanned); seconds."""
    from trace_core.chain_sync import store

    t0 = time.perf_counter()
    with rt.state() as conn, conn.transaction():
        store.apply_job_file(conn, rt.settings.org_id, path)
        row = conn.execute(CURSOR_GET_SQL, {"job": job, "stream": stream}).fetchone()
        start = int(row[0]) if row else 0
        params = dict(job=job, stream=stream, chunk=chunk, chain=chain, start=start, end=end)
        if end > start:
            for statement in BULK_SQL:
                conn.execute(statement, params)
            conn.execute(CURSOR_SQL, params)
    with rt.state() as conn:
        conn.execute("ANALYZE")
    return time.perf_counter() - t0


def progress(state_url: str, job: str, stream: str) -> tuple[int, int, int]:
    with psycopg.connect(state_url) as conn:
        row = conn.execute(PROGRESS_SQL, {"job": job, "stream": stream}).fetchone()
    return (0, 0, 0) if row is None else (int(row[0]), int(row[1]), int(row[2]))


def wait_ranges(state_url: str, job: str, stream: str, total: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        done, dead, _ = progress(state_url, job, stream)
        if dead:
            raise SystemExit(f"{dead} range(s) ended dead; see trace-lite status")
        if done >= total:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"{done}/{total} ranges committed after {timeout:g}s")
        time.sleep(0.25)


def phases(state_url: str, job: str, start_block: int) -> tuple[dict[str, float], float]:
    """Mean seconds per phase over the tail's ranges, and the tail's wall time (first
    planned -> last completed)."""
    with psycopg.connect(state_url) as conn:
        rows = conn.execute(PHASES_SQL, {"job": job, "start": start_block}).fetchall()
    if not rows:
        return {}, 0.0
    out = {
        "planned->claimed": statistics.mean(r[0] for r in rows),
        "claimed->attempt end": statistics.mean(r[1] for r in rows),
        "attempt end->completed": statistics.mean(r[2] for r in rows),
    }
    return out, max(r[4] for r in rows) - min(r[3] for r in rows)


def db_size(state_url: str) -> tuple[int, dict[str, int]]:
    with psycopg.connect(state_url) as conn:
        row = conn.execute(SIZE_SQL).fetchone()
    assert row is not None
    names = ("ranges", "versions", "tasks", "outbox")
    return int(row[0]), dict(zip(names, (int(v) for v in row[1:]), strict=True))


def status_cli(env: dict[str, str], job: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        [TRACE_LITE, "status", "--job", job, "--json"],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - t0


def status_query(rt: Any, job: str) -> float:
    from trace_core.chain_sync.status import job_status

    t0 = time.perf_counter()
    with rt.state() as conn:
        job_status(conn, rt.settings.org_id, job)
    return time.perf_counter() - t0


# --- memory of the stack's processes -----------------------------------------------------


def _role(cmdline: str) -> str:
    for needle, role in (
        ("execute_run", "run worker"),
        ("execute_step", "run step"),
        ("multiprocessing.spawn", "run child (multiprocessing)"),
        ("multiprocessing.forkserver", "run child (multiprocessing)"),
        ("multiprocessing.resource_tracker", "multiprocessing tracker"),
        ("api grpc", "code server (grpc)"),
        ("code-server start", "code server (proxy)"),
        ("_daemon", "daemon"),
        ("dagster-daemon", "daemon"),
        ("dagster_webserver", "webserver"),
        ("query.workers", "query worker"),
        ("query-service", "query service"),
        ("dagster dev", "dagster dev"),
        ("tail -F", "dagster dev log tail"),
    ):
        if needle in cmdline:
            return role
    return "other: " + cmdline[:60]


def _proc_memory(pid: int) -> tuple[int, int] | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    try:
        return int(fields["VmHWM"].split()[0]), int(fields["VmRSS"].split()[0])
    except (KeyError, ValueError):
        return None


def stack_processes(pgids: set[int]) -> dict[int, str]:
    """Live pids (and roles) of the stack's process groups."""
    out: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            if os.getpgid(pid) not in pgids:
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ProcessLookupError):
            continue
        out[pid] = _role(cmd)
    return out


class MemorySampler:
    """Samples the stack's processes every ``interval`` s: per pid the last (VmHWM, VmRSS)."""

    def __init__(self, pgids: set[int], interval: float = 0.5) -> None:
        self.pgids, self.interval = pgids, interval
        self.seen: dict[int, tuple[str, int, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        for pid, role in stack_processes(self.pgids).items():
            mem = _proc_memory(pid)
            if mem is not None:
                self.seen[pid] = (role, *mem)

    def by_role(self) -> dict[str, tuple[int, int]]:
        """Per role: max VmHWM and max current RSS (kB) over its processes."""
        out: dict[str, tuple[int, int]] = {}
        for role, hwm, rss in self.seen.values():
            old = out.get(role, (0, 0))
            out[role] = (max(old[0], hwm), max(old[1], rss))
        return out


def stack_pgids(home: Path) -> set[int]:
    import json

    raw = json.loads((home / "stack.json").read_text())
    out = set()
    for s in raw.get("services", []):
        try:
            out.add(os.getpgid(int(s["pid"])))
        except ProcessLookupError:
            continue
    return out
