"""Epoch partitions in a Dagster instance: the dispatcher's partition sync adds every epoch of
a fixed_target job up front, maps an existing job's committed ranges onto materialized epochs
(recording each range's version), leaves pre-epoch range partitions alone, and re-keys after
an ``epoch_blocks`` edit. Ranges are committed in state only (no runs): the sync reads state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from dagster import AssetMaterialization, DagsterInstance, SensorResult

from tests.integration.test_planner import complete
from trace_core.chain_sync import planner, store
from trace_core.chain_sync.planner import range_partition_key as key
from trace_core.chain_sync.yamlload import load_job_file
from trace_core.runtime import Runtime
from trace_dagster import epochs as epochs_shell
from trace_dagster.driver import _apply_partitions
from trace_dagster.partitions import partitions_def_name, stream_asset_key
from trace_dagster.sensors.dispatcher import PARTITIONS_RESYNC_SECONDS, dispatcher_result

JOB = """kind: chain_sync
name: mig
chain_id: 31337
epoch_blocks: {epoch}
mode: {{kind: fixed_target, from_block: 0, to_block: 450}}
streams:
  blocks: {{cryo_dataset_name: blocks, rpc_pool: mig, chunk_size: 50, max_inflight: 20}}
"""
ASSET = stream_asset_key("mig", "blocks")
EPOCHS = partitions_def_name("mig", "blocks")


def _apply(rt: Runtime, path: Path, epoch: int) -> None:
    path.write_text(JOB.format(epoch=epoch))
    spec, raw = load_job_file(path)
    with rt.state() as conn:
        store.apply_job(conn, rt.settings.org_id, spec, raw, str(path))


def _materializations(instance: DagsterInstance) -> dict[str, AssetMaterialization]:
    out: dict[str, AssetMaterialization] = {}
    for rec in instance.fetch_materializations(ASSET, limit=100, ascending=True).records:
        assert rec.partition_key is not None and rec.asset_materialization is not None
        out[rec.partition_key] = rec.asset_materialization
    return out


def test_sync_maps_an_existing_job_onto_epochs_and_rekeys_after_an_edit(
    trace_env: Runtime, dagster_instance: DagsterInstance, tmp_path: Path
) -> None:
    rt, job_file = trace_env, tmp_path / "mig.yaml"
    _apply(rt, job_file, 100)
    with rt.state() as conn:
        planned = planner.plan_tick(conn, org_id=rt.settings.org_id).planned  # 9 ranges
        versions = {p.range_start: complete(conn, p.task_id) for p in planned[:6]}  # [0, 300)
    # what a Trace before epochs left in the instance: a partition per range, materialized
    old = partitions_def_name("mig", "blocks").removesuffix("__epochs")
    fine = [key(p.range_start, p.range_end) for p in planned]
    dagster_instance.add_dynamic_partitions(old, fine)
    for k in fine[:6]:
        dagster_instance.report_runless_asset_event(AssetMaterialization(ASSET, partition=k))

    first = dispatcher_result(rt, None, dagster_instance, now=1000.0)
    assert isinstance(first, SensorResult)
    _apply_partitions(dagster_instance, first)
    every = [key(a, a + 100) for a in range(0, 500, 100)]
    # every epoch up to to_block exists, planned or not; the complete ones are materialized
    # with the version of each of their ranges, the others show as missing
    assert dagster_instance.get_dynamic_partitions(EPOCHS) == every
    assert dagster_instance.get_dynamic_partitions(old) == fine  # left as it was
    mats = {k: m for k, m in _materializations(dagster_instance).items() if k in every}
    assert sorted(mats) == every[:3]
    for a in (0, 100, 200):
        meta = mats[key(a, a + 100)].metadata
        assert meta["dataset_versions"].value == {
            key(s, s + 50): str(versions[s]) for s in (a, a + 50)
        }
        assert meta["ranges_committed"].value == 2 and meta["complete"].value is True

    # the next sync finds the instance in step: nothing to add, delete or materialize
    again = dispatcher_result(
        rt, first.cursor, dagster_instance, now=1000.0 + PARTITIONS_RESYNC_SECONDS
    )
    assert not isinstance(again, SensorResult) or not (
        again.dynamic_partitions_requests or again.asset_events
    )

    # an edit of epoch_blocks re-keys: epochs of 100 go, epochs of 200 come and the complete
    # one is materialized
    _apply(rt, job_file, 200)
    edited = dispatcher_result(
        rt, first.cursor, dagster_instance, now=1000.0 + 2 * PARTITIONS_RESYNC_SECONDS
    )
    assert isinstance(edited, SensorResult)
    _apply_partitions(dagster_instance, edited)
    assert dagster_instance.get_dynamic_partitions(EPOCHS) == [
        key(0, 200),
        key(200, 400),
        key(400, 600),
    ]
    materialized = dagster_instance.get_materialized_partitions(ASSET)
    assert key(0, 200) in materialized and key(200, 400) not in materialized
    assert (
        len(_materializations(dagster_instance)[key(0, 200)].metadata["dataset_versions"].value)
        == 4
    )  # type: ignore[arg-type]


def test_sync_backfills_complete_epochs_in_capped_batches(
    trace_env: Runtime,
    dagster_instance: DagsterInstance,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At most ``MAX_BACKFILLED_PER_SYNC`` epochs per sync, oldest first; the sync says it is
    not done, and the next one materializes the rest (never one already recorded)."""
    rt = trace_env
    _apply(rt, tmp_path / "mig.yaml", 100)
    with rt.state() as conn:
        planned = planner.plan_tick(conn, org_id=rt.settings.org_id).planned
        for p in planned[:6]:  # [0, 300): three complete epochs
            complete(conn, p.task_id)
    monkeypatch.setattr(epochs_shell, "MAX_BACKFILLED_PER_SYNC", 2)

    first = epochs_shell.partition_sync(rt, dagster_instance)
    assert [m.partition for m in first.materializations] == [key(0, 100), key(100, 200)]
    assert first.done is False
    for m in first.materializations:
        dagster_instance.report_runless_asset_event(m)

    second = epochs_shell.partition_sync(rt, dagster_instance)
    assert [m.partition for m in second.materializations] == [key(200, 300)]
    assert second.done is True


def test_two_finishers_of_one_epoch_record_it_once(
    trace_env: Runtime, dagster_instance: DagsterInstance, tmp_path: Path
) -> None:
    """Two runs commit the last two ranges of an epoch at once: both see it complete, and
    both report; the epoch is materialized once (the claim in Trace state picks one). The
    partition sync does not add another; it takes over a claim whose report was lost (aged
    past the takeover), and a repaired range (new versions) is materialized once more."""
    import threading

    rt = trace_env
    _apply(rt, tmp_path / "mig.yaml", 100)
    with rt.state() as conn:
        planned = planner.plan_tick(conn, org_id=rt.settings.org_id).planned
        for p in planned[:2]:  # [0, 50) and [50, 100): both committed before either reports
            complete(conn, p.task_id)
    barrier = threading.Barrier(2)
    events: dict[int, list[Any]] = {}

    def finisher(start: int) -> None:
        barrier.wait()
        events[start] = epochs_shell.range_events(rt, "mig", "blocks", start, start + 50, {})

    threads = [threading.Thread(target=finisher, args=(a,)) for a in (0, 50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    mats = [e for evs in events.values() for e in evs if isinstance(e, AssetMaterialization)]
    observations = [e for evs in events.values() for e in evs if e not in mats]
    assert len(observations) == 2 and [m.partition for m in mats] == [key(0, 100)]

    # the sync sees [0, 100) complete and absent from the instance (the report is in flight)
    assert epochs_shell.partition_sync(rt, dagster_instance).materializations == []
    with rt.state() as conn:  # the finisher died before its report reached Dagster
        conn.execute(
            "UPDATE state.epoch_materializations SET claimed_at = now() - interval '1 hour'"
        )
    healed = epochs_shell.partition_sync(rt, dagster_instance).materializations
    assert [m.partition for m in healed] == [key(0, 100)]
    assert epochs_shell.partition_sync(rt, dagster_instance).materializations == []

    with rt.state() as conn:  # a repaired range: the epoch's versions change
        conn.execute(
            "UPDATE state.chain_sync_scheduled_ranges SET dataset_version = gen_random_uuid() "
            "WHERE range_start = 0 AND dataset_key = 'blocks'"
        )
    again = [epochs_shell.range_events(rt, "mig", "blocks", 0, 50, {}) for _ in range(2)]
    assert [len([e for e in evs if isinstance(e, AssetMaterialization)]) for evs in again] == [1, 0]
