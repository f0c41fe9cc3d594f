"""The fault suite: each fault strikes while real cryo syncs a real anvil chain, and the end
state must be exact: every range committed once, one dataset version per range, row counts
equal to the chain's, no object outside a committed version. docs/reliability.md tabulates
them (the SIGKILL inside cryo is tests/e2e/test_recovery.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.standalone_postgres import StandalonePostgres
from trace_core.chain_sync import store
from trace_core.chain_sync.yamlload import parse_job
from trace_core.datasets import registry
from trace_core.db.migrate import migrate
from trace_core.engine.dispatcher import dispatch_tick
from trace_core.engine.execute import execute_batch
from trace_core.errors import StorageError
from trace_core.runtime import Runtime
from trace_core.settings import Settings
from trace_core.storage.base import ObjectStore
from trace_lite.devtools.devchain import DevChain

END, CHUNK = 1000, 200
DATASETS = ("blocks", "transactions", "logs")
JOB = """kind: chain_sync
name: {name}
chain_id: {chain_id}
mode: {{kind: fixed_target, from_block: 0, to_block: {end}}}
streams:
""" + "".join(
    f"  {d}: {{{{cryo_dataset_name: {d}, rpc_pool: fault, chunk_size: {CHUNK}, max_inflight: 5}}}}\n"
    for d in DATASETS
)
CLI = str(Path(sys.executable).parent / "trace-lite")


def job_text(chain: DevChain, name: str = "faults") -> str:
    return JOB.format(name=name, chain_id=chain.chain_id, end=END)


def apply(rt: Runtime, chain: DevChain, name: str = "faults") -> None:
    spec, raw = parse_job(job_text(chain, name), source=f"{name}.yaml")
    with rt.state() as conn:
        store.apply_job(conn, rt.settings.org_id, spec, raw, f"{name}.yaml")


def assert_exact(rt: Runtime, chain: DevChain) -> None:
    """Every range committed once with the chain's rows; no duplicate or stray versions."""
    with rt.state() as conn:
        statuses = conn.execute("SELECT DISTINCT status FROM state.tasks").fetchall()
        dupes = conn.execute(
            "SELECT dataset_uuid, range_start, count(*) FROM state.dataset_versions "
            "GROUP BY 1, 2 HAVING count(*) > 1"
        ).fetchall()
        prefixes = {r[0] for r in conn.execute("SELECT storage_prefix FROM state.dataset_versions")}
        expected = {
            "blocks": chain.count_blocks(0, END),
            "transactions": chain.count_transactions(0, END),
            "logs": chain.count_logs(0, END),
        }
        for dataset, rows in expected.items():
            versions = registry.versions_for_stream(
                conn, rt.settings.org_id, chain.chain_id, dataset
            )
            assert [v.range_start for v in versions] == list(range(0, END, CHUNK)), dataset
            assert sum(v.row_count for v in versions) == rows, dataset
    assert statuses == [("succeeded",)]
    assert dupes == []
    assert len(prefixes) == len(DATASETS) * END // CHUNK
    # nothing visible outside committed versions (staging aside)
    stray = {
        o.key for o in rt.store.list("cryo/") if not any(o.key.startswith(p) for p in prefixes)
    }
    assert stray == set()


def cli_env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "TRACE_LEASE_SECONDS": "8",
            "TRACE_HEARTBEAT_SECONDS": "1",
            "TRACE_RETRY_BASE_SECONDS": "0",
            "TRACE_RETRY_MAX_SECONDS": "1",
            "TRACE_MAX_ATTEMPTS": "6",
        }
    )
    env.update(extra)
    return env


def succeeded(rt: Runtime) -> int:
    with rt.state() as conn:
        row = conn.execute("SELECT count(*) FROM state.tasks WHERE status = 'succeeded'").fetchone()
    return 0 if row is None else int(row[0])


def wait_for(what: str, done: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def run_until_idle(env: dict[str, str], log: Path, timeout: float = 300) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    return subprocess.Popen(
        [CLI, "run", "--until-idle", "--timeout", str(timeout)],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
    )


def drive_in_process(rt: Runtime, max_rounds: int = 60) -> None:
    """Plan, publish and execute every due task until none is left (retries included)."""
    for _ in range(max_rounds):
        dispatch_tick(rt)
        with rt.state() as conn:
            due = [
                r[0]
                for r in conn.execute(
                    "SELECT task_id FROM state.tasks WHERE status = 'queued' "
                    "AND next_run_at <= now()"
                ).fetchall()
            ]
            left = conn.execute(
                "SELECT count(*) FROM state.tasks WHERE status <> 'succeeded'"
            ).fetchone()
        if not due and left == (0,):
            return
        for outcome in execute_batch(rt, due, concurrency=4):
            assert outcome.status != "dead", outcome.error
        time.sleep(0.05)
    raise AssertionError("tasks never all succeeded")


@pytest.mark.timeout(400)
def test_postgres_server_restart_mid_sync(anvil_chain: DevChain, tmp_path: Path) -> None:
    """A real Postgres server process (not the embedded one) is restarted while
    ``trace-lite run --until-idle`` syncs: the driver rides it out, tasks that lost their
    connection are retried, and the end state is exact."""
    with StandalonePostgres(tmp_path / "pg") as pg:
        env = {k: v for k, v in cli_env({}).items() if not k.startswith(("TRACE_", "DAGSTER_"))}
        env |= {k: v for k, v in cli_env({}).items() if k.startswith("TRACE_") and "URL" not in k}
        env |= {
            "TRACE_HOME": str(tmp_path / "home"),
            "TRACE_DATABASE_URL": pg.url,
            "TRACE_RPC_POOL_FAULT_URL": anvil_chain.rpc_url,
            "DAGSTER_HOME": str(tmp_path / "dagster"),
        }
        (tmp_path / "dagster").mkdir()
        rt = Runtime(Settings(home=tmp_path / "home", database_url=pg.url))  # type: ignore[arg-type]
        migrate(rt.dbs)
        apply(rt, anvil_chain)
        proc = run_until_idle(env, tmp_path / "run.log")
        try:
            wait_for("3 ranges committed", lambda: succeeded(rt) >= 3)
            assert succeeded(rt) < len(DATASETS) * END // CHUNK  # mid-sync
            pg.restart(down_seconds=2)
            code = proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
        log = (tmp_path / "run.log").read_text()
        assert code == 0, log[-3000:]
        assert "idle=True" in log
        assert_exact(rt, anvil_chain)


class FaultyStore:
    """The real store, with the n-th call of chosen methods failing as S3 or a disk would
    (``StorageError``, retryable). Counts are shared across threads."""

    def __init__(self, inner: ObjectStore, fail_on: dict[str, set[int]]) -> None:
        self._inner = inner
        self._fail_on = fail_on
        self._calls: dict[str, int] = {}
        self._lock = threading.Lock()
        self.failed: list[str] = []

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._inner, name)
        if name not in self._fail_on:
            return target

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                n = self._calls[name] = self._calls.get(name, 0) + 1
                fail = n in self._fail_on[name]
                if fail:
                    self.failed.append(f"{name}#{n}")
            if fail:
                raise StorageError(f"injected: {name} call {n} failed")
            return target(*args, **kwargs)

        return call


def test_object_store_errors_on_upload_and_commit(
    trace_env: Runtime, anvil_chain: DevChain, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Uploads to staging (``put_file``) and the commit's moves and manifest writes
    (``move``, ``put_bytes``) fail now and then: the attempts are retried, a commit that
    failed half way leaves nothing visible, and every range ends committed once."""
    monkeypatch.setenv("TRACE_RPC_POOL_FAULT_URL", anvil_chain.rpc_url)
    rt = Runtime(trace_env.settings.model_copy(update={"max_attempts": 6}), trace_env.dbs)
    faulty = FaultyStore(rt.store, {"put_file": {2, 9, 17}, "move": {3, 12}, "put_bytes": {1, 6}})
    rt.__dict__["store"] = faulty
    apply(rt, anvil_chain)
    drive_in_process(rt)
    assert sorted(faulty.failed) == sorted(
        [
            "put_file#2",
            "put_file#9",
            "put_file#17",
            "move#3",
            "move#12",
            "put_bytes#1",
            "put_bytes#6",
        ]
    )
    with rt.state() as conn:
        retried = conn.execute(
            "SELECT count(*) FROM state.task_attempts WHERE outcome = 'retryable' "
            "AND error LIKE '%%injected%%'"
        ).fetchone()
    assert retried == (7,)  # each injected failure cost exactly one attempt
    assert_exact(rt, anvil_chain)


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    """An 8 KiB tmpfs for cryo's staging: real ENOSPC (needs root, as CI and this box have)."""
    mount = tmp_path / "staging"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_in_staging(
    trace_env: Runtime,
    anvil_chain: DevChain,
    monkeypatch: pytest.MonkeyPatch,
    small_disk: Path,
) -> None:
    """Staging fills up: the extraction fails cleanly (retryable, then dead with the reason),
    nothing is committed for those ranges; with space again, ``trace-lite retry`` revives them
    and they commit once."""
    from click.testing import CliRunner

    from trace_core.cli.main import cli

    monkeypatch.setenv("TRACE_RPC_POOL_FAULT_URL", anvil_chain.rpc_url)
    rt = Runtime(
        trace_env.settings.model_copy(update={"cryo_staging_dir": small_disk, "max_attempts": 2}),
        trace_env.dbs,
    )
    apply(rt, anvil_chain)
    dispatch_tick(rt)
    for _ in range(10):  # every attempt of every range runs out of space, until none is left
        with rt.state() as conn:
            due = [
                r[0]
                for r in conn.execute("SELECT task_id FROM state.tasks WHERE status = 'queued'")
            ]
        if not due:
            break
        list(execute_batch(rt, due, concurrency=4))
    with rt.state() as conn:
        dead = conn.execute("SELECT last_error FROM state.tasks WHERE status = 'dead'").fetchall()
        versions = conn.execute("SELECT count(*) FROM state.dataset_versions").fetchone()
    assert len(dead) == len(DATASETS) * END // CHUNK  # nothing got through
    assert all("No space left on device in the staging directory" in e for (e,) in dead), dead
    assert versions == (0,)  # and nothing was committed
    subprocess.run(["mount", "-o", "remount,size=256m", str(small_disk)], check=True)
    revived = CliRunner().invoke(cli, ["retry", "--job", "faults"])
    assert revived.exit_code == 0, revived.output
    drive_in_process(rt)
    assert_exact(rt, anvil_chain)


@pytest.mark.timeout(400)
def test_two_dispatchers_and_workers_at_once(
    trace_env: Runtime, anvil_chain: DevChain, tmp_path: Path
) -> None:
    """Two ``trace-lite run --until-idle`` processes (each a dispatcher and a worker) on one
    state, plus a third thread hammering ``dispatch_tick``: ranges are planned once, every
    range commits once."""
    rt = trace_env
    apply(rt, anvil_chain)
    env = cli_env({"TRACE_RPC_POOL_FAULT_URL": anvil_chain.rpc_url})
    stop = threading.Event()
    ticks = [0]

    def hammer() -> None:
        while not stop.is_set():
            dispatch_tick(rt)
            ticks[0] += 1

    hammering = threading.Thread(target=hammer)
    hammering.start()
    procs = []
    for i in range(2):
        home = tmp_path / f"dagster{i}"
        home.mkdir()
        procs.append(run_until_idle(env | {"DAGSTER_HOME": str(home)}, tmp_path / f"run{i}.log"))
    try:
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        stop.set()
        hammering.join()
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert codes == [0, 0], [(tmp_path / f"run{i}.log").read_text()[-2000:] for i in range(2)]
    assert ticks[0] > 10
    with rt.state() as conn:
        planned = conn.execute(
            "SELECT count(*), count(DISTINCT (dataset_key, range_start)) "
            "FROM state.chain_sync_scheduled_ranges"
        ).fetchone()
    assert planned == (len(DATASETS) * END // CHUNK,) * 2
    assert_exact(rt, anvil_chain)


def test_concurrent_apply_of_the_same_job(
    trace_env: Runtime, anvil_chain: DevChain, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight applies of the same job at once: one job, its streams once, nothing planned twice."""
    monkeypatch.setenv("TRACE_RPC_POOL_FAULT_URL", anvil_chain.rpc_url)
    rt = trace_env
    spec, raw = parse_job(job_text(anvil_chain), source="faults.yaml")
    barrier = threading.Barrier(8)
    results: list[Any] = []
    errors: list[BaseException] = []

    def apply_once() -> None:
        try:
            barrier.wait(timeout=30)
            with rt.state() as conn:
                results.append(store.apply_job(conn, rt.settings.org_id, spec, raw, "f.yaml"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=apply_once) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sum(1 for r in results if r.created) == 1
    assert len({r.job_id for r in results}) == 1
    with rt.state() as conn:
        jobs = conn.execute("SELECT count(*) FROM state.chain_sync_jobs").fetchone()
        streams = conn.execute("SELECT count(*) FROM state.chain_sync_streams").fetchone()
    assert jobs == (1,) and streams == (len(DATASETS),)
    drive_in_process(rt)
    assert_exact(rt, anvil_chain)


@pytest.mark.timeout(400)
@pytest.mark.parametrize("skew", ["+2h", "-2h"])
def test_clock_skew_between_worker_and_database(
    trace_env: Runtime, anvil_chain: DevChain, tmp_path: Path, skew: str
) -> None:
    """The worker process's clock is two hours off (libfaketime skews every clock call, cryo's
    too): leases, backoff and expiry use the database clock, so no lease looks expired or
    eternal, every task succeeds on its first attempt, and the data is exact."""
    import libfaketime

    rt = trace_env
    apply(rt, anvil_chain)
    _needed, preload = libfaketime.get_reload_information()
    env = cli_env({"TRACE_RPC_POOL_FAULT_URL": anvil_chain.rpc_url, "DAGSTER_HOME": str(tmp_path)})
    env |= {**preload, "FAKETIME": skew, "DONT_FAKE_MONOTONIC": "1"}
    probe = subprocess.run(
        [sys.executable, "-c", "import time; print(time.time())"], env=env, capture_output=True
    )
    offset = float(probe.stdout) - time.time()
    assert abs(abs(offset) - 7200) < 60, offset  # the skew is real in the child
    proc = run_until_idle(env, tmp_path / "run.log")
    code = proc.wait(timeout=300)
    assert code == 0, (tmp_path / "run.log").read_text()[-3000:]
    with rt.state() as conn:
        attempts = conn.execute("SELECT max(attempt) FROM state.tasks").fetchone()
    assert attempts == (1,)
    assert_exact(rt, anvil_chain)
