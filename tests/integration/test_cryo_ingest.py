"""cryo_ingest end to end: real cryo against a seeded anvil chain, real Postgres, local/S3 store.

The session's ``anvil_chain`` has 2,500 blocks (0..2499) with transfers and emitter events.
"""

from __future__ import annotations

import stat
import threading
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import ANVIL_CHAIN_BLOCKS
from trace_core.datasets import ids, registry
from trace_core.datasets.cryo_schemas import arrow_schema
from trace_core.datasets.manifest import load_manifest
from trace_core.db.connection import Databases
from trace_core.engine.execute import execute_task
from trace_core.errors import (
    ArtifactCapExceeded,
    ArtifactInvalid,
    ChainMismatch,
    ConfigError,
    CoverageError,
    FatalError,
    InvalidPayload,
    RetryableError,
    RpcError,
    StaleAttempt,
    TraceError,
    UnknownCryoDataset,
)
from trace_core.operators import cryo_ingest
from trace_core.operators.base import OperatorRegistry
from trace_core.operators.cryo_ingest import (
    CryoIngestTask,
    IngestResult,
    attempt_staging_dir,
    check_coverage,
    choose_mode,
    extract_and_stage,
    run_cryo_ingest,
)
from trace_core.runtime import Runtime
from trace_core.settings import Settings
from trace_core.storage import LocalStore, ObjectStore
from trace_core.storage.s3 import S3Store
from trace_core.tasks import RetryPolicy, claim, complete_failure, create_task
from trace_core.tasks.lifecycle import Lease
from trace_lite.devtools.devchain import DevChain

POOL = "anvil"
ENV_VAR = "TRACE_RPC_POOL_ANVIL_URL"
ORG = "00000000-0000-0000-0000-000000000001"
DATASETS = ["blocks", "transactions", "logs"]


@pytest.fixture
def real_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"cryo_mode": "real", "verify_log_receipts": True})


@pytest.fixture
def env(anvil_chain: DevChain) -> dict[str, str]:
    return {ENV_VAR: anvil_chain.rpc_url}


@pytest.fixture
def store(settings: Settings) -> LocalStore:
    return LocalStore(settings.resolved_home() / "objects")


def _connector(dbs: Databases) -> Callable[[], AbstractContextManager[psycopg.Connection[Any]]]:
    return lambda: psycopg.connect(dbs.state_url, autocommit=True)


def _payload(dataset: str, start: int, end: int, **extra: Any) -> dict[str, Any]:
    payload = {
        "chain_id": 31337,
        "dataset_key": dataset,
        "cryo_dataset_name": dataset,
        "range_start": start,
        "range_end": end,
        "rpc_pool": POOL,
    }
    payload.update(extra)
    return payload


def _claim(
    dbs: Databases,
    payload: dict[str, Any],
    *,
    task_id: uuid.UUID | None = None,
    max_attempts: int = 3,
) -> Lease:
    task_id = task_id or uuid.uuid4()
    with psycopg.connect(dbs.state_url, autocommit=True) as conn, conn.transaction():
        create_task(
            conn,
            task_id=task_id,
            operator="cryo_ingest",
            payload=payload,
            max_attempts=max_attempts,
        )
        return claim(conn, task_id, lease_seconds=30)


def _ingest(
    settings: Settings,
    store: ObjectStore,
    dbs: Databases,
    env: dict[str, str],
    payload: dict[str, Any],
    **kw: Any,
) -> IngestResult:
    lease = _claim(dbs, payload, **kw)
    return run_cryo_ingest(settings, store, lease, state=_connector(dbs), environ=env)


def _fail(dbs: Databases, lease: Lease, exc: TraceError) -> str:
    """Record a failure as the worker does."""
    with psycopg.connect(dbs.state_url, autocommit=True) as conn, conn.transaction():
        return complete_failure(
            conn,
            lease,
            error=f"{type(exc).__name__}: {exc}",
            fatal=isinstance(exc, FatalError),
            policy=RetryPolicy(0, 0),
        )


def _task(dbs: Databases, task_id: uuid.UUID) -> dict[str, Any]:
    with psycopg.connect(dbs.state_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT status, attempt, last_error, outputs FROM state.tasks WHERE task_id = %s",
            (task_id,),
        ).fetchone()
    assert row is not None
    return dict(zip(["status", "attempt", "last_error", "outputs"], row, strict=True))


def _nothing_committed(dbs: Databases, store: ObjectStore) -> None:
    with psycopg.connect(dbs.state_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM state.dataset_versions").fetchone()
    assert row == (0,)
    assert store.list("cryo/") == []


def _files(dbs: Databases, store: ObjectStore, dataset_key: str) -> list[str]:
    """Parquet files of the versions a reader resolves for a stream (through the registry)."""
    with psycopg.connect(dbs.state_url, autocommit=True) as conn:
        versions = registry.versions_for_stream(conn, ORG, 31337, dataset_key)
    return [
        store.duckdb_uri(key)
        for v in versions
        for key in load_manifest(store, v.manifest_key, prefix=v.storage_prefix).parquet_keys
    ]


def test_ingests_blocks_transactions_and_logs_exactly(
    real_settings: Settings,
    store: LocalStore,
    dbs: Databases,
    env: dict[str, str],
    anvil_chain: DevChain,
) -> None:
    ranges = [(0, 1000), (1000, 2000), (2000, ANVIL_CHAIN_BLOCKS)]
    for dataset in DATASETS:
        for start, end in ranges:
            result = _ingest(real_settings, store, dbs, env, _payload(dataset, start, end))
            assert result.mode == "real"
            assert result.committed.newly_registered
    con = duckdb.connect()

    def q(sql: str, dataset: str) -> tuple[Any, ...]:
        row = con.execute(sql.format(f"read_parquet({_files(dbs, store, dataset)!r})")).fetchone()
        assert row is not None
        return row

    n, distinct, lo, hi = q(
        "SELECT count(*), count(DISTINCT block_number), min(block_number), max(block_number) FROM {}",
        "blocks",
    )
    assert (n, distinct, lo, hi) == (
        ANVIL_CHAIN_BLOCKS,
        ANVIL_CHAIN_BLOCKS,
        0,
        ANVIL_CHAIN_BLOCKS - 1,
    )

    txs = anvil_chain.count_transactions(0, ANVIL_CHAIN_BLOCKS)
    assert txs == anvil_chain.seed_summary.transactions(0, ANVIL_CHAIN_BLOCKS) > 100
    assert q("SELECT count(*), count(DISTINCT transaction_hash) FROM {}", "transactions") == (
        txs,
        txs,
    )

    logs = anvil_chain.count_logs(0, ANVIL_CHAIN_BLOCKS)
    assert logs == anvil_chain.seed_summary.logs(0, ANVIL_CHAIN_BLOCKS) > 100
    assert q("SELECT count(*), count(DISTINCT (block_number, log_index)) FROM {}", "logs") == (
        logs,
        logs,
    )
    per_range = q(
        "SELECT count(*) FROM {} WHERE block_number >= 1000 AND block_number < 2000", "transactions"
    )
    assert per_range == (anvil_chain.count_transactions(1000, 2000),)


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_rerun_with_another_task_yields_the_same_single_version(
    kind: str,
    real_settings: Settings,
    dbs: Databases,
    env: dict[str, str],
    request: pytest.FixtureRequest,
) -> None:
    store: ObjectStore
    if kind == "local":
        store = LocalStore(real_settings.resolved_home() / "objects")
    else:
        store = S3Store(
            f"ingest-{uuid.uuid4().hex[:10]}",
            endpoint_url=request.getfixturevalue("moto_server_url"),
        )
        store.ensure_bucket()
    first = _ingest(real_settings, store, dbs, env, _payload("logs", 500, 1500)).committed
    manifest = store.get_bytes(first.record.manifest_key)
    second = _ingest(real_settings, store, dbs, env, _payload("logs", 500, 1500)).committed
    assert not second.newly_registered
    assert second.record.dataset_version == first.record.dataset_version
    assert second.record.storage_prefix == first.record.storage_prefix
    assert store.get_bytes(first.record.manifest_key) == manifest
    with psycopg.connect(dbs.state_url, autocommit=True) as conn:
        assert len(registry.versions_of_dataset(conn, first.record.dataset_uuid)) == 1
    assert store.list("staging/") == []


def test_killed_attempt_staging_is_never_visible_and_the_retry_commits_once(
    real_settings: Settings, store: LocalStore, dbs: Databases, env: dict[str, str]
) -> None:
    payload = _payload("transactions", 0, 1000)
    killed = _claim(dbs, payload)
    staged, _mode = extract_and_stage(
        real_settings, store, killed, environ=env
    )  # then the worker dies
    assert [o.key for o in store.list("staging/")] == [f.staging_key for f in staged.files]
    _nothing_committed(dbs, store)

    with psycopg.connect(dbs.state_url, autocommit=True) as conn, conn.transaction():
        conn.execute(
            "UPDATE state.tasks SET lease_expires_at = now() - interval '1 s' WHERE task_id = %s",
            (killed.task_id,),
        )
        retry = claim(conn, killed.task_id, lease_seconds=30)
    result = run_cryo_ingest(real_settings, store, retry, state=_connector(dbs), environ=env)
    assert result.committed.record.attempt == 2

    from trace_core.datasets.commit import commit_dataset_version

    with psycopg.connect(dbs.state_url, autocommit=True) as conn:
        with pytest.raises(StaleAttempt):
            commit_dataset_version(conn, store, killed, staged)  # the zombie wakes up: refused
        assert len(registry.versions_of_dataset(conn, staged.dataset_uuid)) == 1
    published = {o.key for o in store.list("cryo/")}
    assert not {f.staging_key for f in staged.files} & published
    assert _task(dbs, killed.task_id)["status"] == "succeeded"


def test_lost_lease_during_extraction_commits_nothing(
    real_settings: Settings, store: LocalStore, dbs: Databases, env: dict[str, str]
) -> None:
    lease = _claim(dbs, _payload("blocks", 0, 2000))
    beats: list[int] = []

    def heartbeat() -> None:
        beats.append(1)
        raise StaleAttempt(lease.task_id, lease.attempt, "stolen")

    fast = real_settings.model_copy(update={"heartbeat_seconds": 0.001})
    with pytest.raises(StaleAttempt):
        run_cryo_ingest(fast, store, lease, state=_connector(dbs), heartbeat=heartbeat, environ=env)
    assert beats  # the heartbeat ran, saw the lease gone, and stopped the run before commit
    _nothing_committed(dbs, store)
    assert _task(dbs, lease.task_id)["status"] == "running"


def test_heartbeat_extends_the_lease_while_cryo_runs(
    real_settings: Settings, store: LocalStore, dbs: Databases, env: dict[str, str]
) -> None:
    lease = _claim(dbs, _payload("blocks", 0, ANVIL_CHAIN_BLOCKS))
    beats = threading.Event()
    real_beat = cryo_ingest.lease_heartbeat(real_settings, lease, _connector(dbs))

    def heartbeat() -> None:
        real_beat()
        beats.set()

    fast = real_settings.model_copy(update={"heartbeat_seconds": 0.001})
    result = run_cryo_ingest(
        fast, store, lease, state=_connector(dbs), heartbeat=heartbeat, environ=env
    )
    assert beats.is_set()
    assert result.committed.record.row_count == ANVIL_CHAIN_BLOCKS


def test_unknown_dataset_is_fatal_on_the_first_attempt(
    real_settings: Settings, store: LocalStore, dbs: Databases, env: dict[str, str]
) -> None:
    lease = _claim(dbs, _payload("not_a_dataset", 0, 100))
    with pytest.raises(UnknownCryoDataset) as info:
        run_cryo_ingest(real_settings, store, lease, state=_connector(dbs), environ=env)
    assert _fail(dbs, lease, info.value) == "dead"
    task = _task(dbs, lease.task_id)
    assert (task["status"], task["attempt"]) == ("dead", 1)
    assert "not_a_dataset" in task["last_error"]
    _nothing_committed(dbs, store)


def test_unreachable_rpc_is_retryable_until_attempts_run_out(
    real_settings: Settings, store: LocalStore, dbs: Databases
) -> None:
    dead_url = "http://127.0.0.1:9/secret-api-key"
    env = {ENV_VAR: dead_url}
    task_id = uuid.uuid4()
    decisions = []
    for attempt in (1, 2):
        lease = _claim(dbs, _payload("blocks", 0, 100), task_id=task_id, max_attempts=2)
        assert lease.attempt == attempt
        with pytest.raises(RpcError) as info:
            run_cryo_ingest(real_settings, store, lease, state=_connector(dbs), environ=env)
        assert isinstance(info.value, RetryableError)
        decisions.append(_fail(dbs, lease, info.value))
    assert decisions == ["retry", "dead"]
    task = _task(dbs, task_id)
    assert task["status"] == "dead"
    assert "unreachable" in task["last_error"] and "pool anvil" in task["last_error"]
    assert "secret-api-key" not in task["last_error"] and ":9" not in task["last_error"]
    _nothing_committed(dbs, store)


def test_wrong_chain_is_fatal_and_range_past_head_is_retryable(
    real_settings: Settings, store: LocalStore, dbs: Databases, env: dict[str, str]
) -> None:
    lease = _claim(dbs, _payload("blocks", 0, 100, chain_id=1))
    with pytest.raises(ChainMismatch, match="serves chain 31337"):
        run_cryo_ingest(real_settings, store, lease, state=_connector(dbs), environ=env)
    lease = _claim(dbs, _payload("blocks", ANVIL_CHAIN_BLOCKS - 10, ANVIL_CHAIN_BLOCKS + 10))
    with pytest.raises(CoverageError, match="past the head"):
        run_cryo_ingest(real_settings, store, lease, state=_connector(dbs), environ=env)
    _nothing_committed(dbs, store)


@pytest.mark.parametrize(
    "caps",
    [
        {"max_parquet_files_per_range": 1},
        {"max_parquet_bytes_per_file": 1000},
        {"max_total_parquet_bytes_per_range": 5000},
    ],
)
def test_artifact_caps_are_fatal_and_commit_nothing(
    caps: dict[str, int],
    real_settings: Settings,
    store: LocalStore,
    dbs: Databases,
    env: dict[str, str],
) -> None:
    capped = real_settings.model_copy(update=caps)
    lease = _claim(dbs, _payload("blocks", 0, 2000))
    with pytest.raises(ArtifactCapExceeded) as info:
        run_cryo_ingest(capped, store, lease, state=_connector(dbs), environ=env)
    assert _fail(dbs, lease, info.value) == "dead"
    _nothing_committed(dbs, store)
    assert store.list("staging/") == []
    left = attempt_staging_dir(capped, lease)  # kept for debugging until gc_staging
    assert stat.S_IMODE(left.stat().st_mode) == 0o700


def test_fake_mode_writes_the_real_columns(
    real_settings: Settings,
    settings: Settings,
    store: LocalStore,
    dbs: Databases,
    env: dict[str, str],
) -> None:
    fake = settings.model_copy(update={"cryo_mode": "fake"})
    for dataset in DATASETS:
        real = _ingest(
            real_settings, store, dbs, env, _payload(dataset, 0, 300, dataset_key=f"real_{dataset}")
        )
        faked = _ingest(
            fake, store, dbs, env, _payload(dataset, 0, 300, dataset_key=f"fake_{dataset}")
        )
        assert (real.mode, faked.mode) == ("real", "fake")
        real_manifest = load_manifest(store, real.committed.record.manifest_key)
        fake_manifest = load_manifest(store, faked.committed.record.manifest_key)
        assert fake_manifest.schema == real_manifest.schema
        assert [(c.name, c.type) for c in real_manifest.schema] == [
            (f.name, str(f.type)) for f in arrow_schema(dataset)
        ]
        assert faked.committed.record.row_count > 0
        # made-up data is marked in the manifest and the registry row, under its own version id
        assert (fake_manifest.fake, faked.committed.record.fake) == (True, True)
        assert (real_manifest.fake, real.committed.record.fake) == (False, False)
        assert faked.outputs()["fake"] is True and real.outputs()["fake"] is False
    fake_id = ids.dataset_version(faked.committed.record.dataset_uuid, "h", 1, 0, 300, fake=True)
    assert fake_id != ids.dataset_version(faked.committed.record.dataset_uuid, "h", 1, 0, 300)
    again = _ingest(fake, store, dbs, env, _payload("logs", 0, 300, dataset_key="fake_logs"))
    assert not again.committed.newly_registered  # fake output is deterministic, too


def test_worker_runs_cryo_ingest_through_its_completion_transaction(
    settings: Settings, dbs: Databases, anvil_chain: DevChain, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_VAR, anvil_chain.rpc_url)
    rt = Runtime(settings, dbs)  # the default mode is real
    reg = OperatorRegistry()
    reg.register("cryo_ingest", cryo_ingest.cryo_ingest_operator)
    task_id = uuid.uuid4()
    with rt.state() as conn, conn.transaction():
        create_task(
            conn, task_id=task_id, operator="cryo_ingest", payload=_payload("blocks", 0, 1000)
        )
    outcome = execute_task(rt, task_id, reg)
    assert outcome.status == "succeeded", outcome.error
    assert outcome.outputs["mode"] == "real"
    assert outcome.outputs["row_count"] == 1000
    assert _task(dbs, task_id)["outputs"]["dataset_version"] == outcome.outputs["dataset_version"]
    rt.close()


# --- pure parts: payload, mode, coverage ---------------------------------------------------


def test_payload_parsing() -> None:
    p = CryoIngestTask.parse(
        _payload("logs", 0, 10, cryo_options={"topic0": "0xdd", "hex": None}), org_id=ORG
    )
    assert p.config_hash == ids.config_hash("logs", {"topic0": "0xdd"})
    assert p.dataset_uuid == ids.dataset_uuid(ORG, 31337, "logs")
    planner = {
        **_payload("logs", 0, 10),
        "cryo_dataset_name": None,
        "config_hash": "cryo_ingest.logs:v1",
        "operator": "cryo_ingest",
    }
    assert CryoIngestTask.parse(planner, org_id=ORG).cryo_dataset_name == "logs"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"range_end": 0}, "range_end"),
        ({"range_start": -1}, "range_start"),
        ({"chain_id": "1"}, "chain_id"),
        ({"dataset_uuid": "nope"}, "dataset_uuid"),
        ({"rpc_pool": "http://x"}, "rpc_pool"),
        ({"cryo_options": {"output_dir": "/tmp"}}, "cryo_options"),
    ]
    for bad, field in cases:
        with pytest.raises(InvalidPayload) as info:
            CryoIngestTask.parse({**_payload("logs", 0, 10), **bad}, org_id=ORG)
        assert info.value.fields["field"] == field
    for name, match in [("txs", "alias"), ("balances", "inputs"), ("state_diffs", "unknown")]:
        with pytest.raises(UnknownCryoDataset, match=match):
            CryoIngestTask.parse(_payload(name, 0, 10), org_id=ORG)


def test_mode_selection(settings: Settings) -> None:
    """Real is the default and never falls back to fake; fake only when set explicitly."""
    assert settings.cryo_mode == "real"
    assert choose_mode(settings, POOL, {ENV_VAR: "http://node"}) == ("real", "http://node")
    with pytest.raises(ConfigError, match=f"{ENV_VAR} is not set"):
        choose_mode(settings, POOL, {})
    fake = settings.model_copy(update={"cryo_mode": "fake"})
    assert choose_mode(fake, POOL, {ENV_VAR: "http://node"}) == ("fake", None)
    assert choose_mode(fake, POOL, {}) == ("fake", None)
    with pytest.raises(ValueError, match="cryo_mode"):
        Settings(cryo_mode="auto")  # type: ignore[arg-type]


def _write(
    dir_: Path,
    a: int,
    b: int,
    blocks: list[int],
    dataset: str = "blocks",
    net: str = "network_31337",
) -> Path:
    path = dir_ / f"{net}__{dataset}__{a:08d}_to_{b:08d}.parquet"
    pq.write_table(pa.table({"block_number": pa.array(blocks, pa.uint32())}), path)
    return path


def test_coverage_detects_gaps_duplicates_and_strays(tmp_path: Path) -> None:
    p = CryoIngestTask.parse(_payload("blocks", 0, 20), org_id=ORG)
    ok = [
        _write(tmp_path, 0, 9, list(range(10))),
        _write(tmp_path, 10, 19, list(range(10, 20)), net="ethereum"),
    ]
    assert check_coverage(p, ok) == 20
    with pytest.raises(CoverageError, match="end at block 10"):
        check_coverage(p, ok[:1])
    with pytest.raises(CoverageError, match="gap"):
        check_coverage(p, ok[1:])
    dup = tmp_path / "dup"
    dup.mkdir()
    with pytest.raises(CoverageError, match="distinct"):
        check_coverage(
            p, [_write(dup, 0, 9, [*range(9), 8]), _write(dup, 10, 19, list(range(10, 20)))]
        )
    out = tmp_path / "out"
    out.mkdir()
    logs = CryoIngestTask.parse(_payload("logs", 0, 20), org_id=ORG)
    with pytest.raises(CoverageError, match="outside"):
        check_coverage(logs, [_write(out, 0, 19, [3, 25], dataset="logs")])
    with pytest.raises(CoverageError, match="no Parquet"):
        check_coverage(logs, [])
    with pytest.raises(ArtifactInvalid, match="unexpected output file"):
        check_coverage(logs, [_write(out, 0, 19, [3], dataset="blocks")])
