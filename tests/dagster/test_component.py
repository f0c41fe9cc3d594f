"""ChainSyncComponent in a scaffolded project (Dagster's component sandbox): the scaffold's
defs.yaml and cryo.args, the stream assets it builds, translation, bad fields named with their
defs.yaml line (in the loader and through ``dg check defs``), and one epoch materialized from
the component's own asset on a real anvil chain with real cryo."""

from __future__ import annotations

import shlex
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from dagster import (
    AssetKey,
    AssetsDefinition,
    BackfillPolicy,
    DagsterInstance,
    SensorResult,
    SkipReason,
    build_sensor_context,
    materialize,
)
from dagster.components.core.package_entry import discover_entry_point_package_objects
from dagster.components.testing import DefsFolderSandbox, create_defs_folder_sandbox
from dagster_shared.serdes.objects import EnvRegistryKey

from trace_core.chain_sync import store
from trace_core.errors import ConfigError, InvalidJobFile
from trace_core.runtime import Runtime
from trace_dagster import ChainSyncComponent
from trace_dagster.components.chain_sync import TRACE_RESOURCE
from trace_dagster.driver import _apply_partitions
from trace_dagster.sensors.dispatcher import dispatcher_result
from trace_dagster.sensors.health import SENSORS_ASSET
from trace_lite.devtools.devchain import DevChain

E = TypeVar("E", bound=ConfigError)
PARAMS = {"datasets": ["blocks", "logs"], "rpc_pool": "comp", "epoch_blocks": 200}


def _scaffold(sandbox: DefsFolderSandbox, **params: Any) -> Path:
    return sandbox.scaffold_component(
        ChainSyncComponent, defs_path="my_chain", scaffold_params={**PARAMS, **params}
    )


def _edit(defs_path: Path, **attributes: Any) -> None:
    doc = yaml.safe_load((defs_path / "defs.yaml").read_text())
    doc["attributes"].update(attributes)
    (defs_path / "defs.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


def test_the_installed_package_registers_the_component() -> None:
    """What ``dg list components`` reads: the dagster_dg_cli.registry_modules entry point."""
    found = discover_entry_point_package_objects()
    assert found[EnvRegistryKey(name="ChainSyncComponent", namespace="trace_dagster")] is (
        ChainSyncComponent
    )


def test_scaffold_writes_the_job_and_cryo_args_and_builds_stream_assets() -> None:
    with create_defs_folder_sandbox() as sandbox:
        path = _scaffold(sandbox)
        attrs = yaml.safe_load((path / "defs.yaml").read_text())["attributes"]
        assert attrs["name"] == "my_chain" and attrs["epoch_blocks"] == 200
        assert {k: s["rpc_pool"] for k, s in attrs["streams"].items()} == {
            "blocks": "comp",
            "logs": "comp",
        }
        # cryo.args: one cryo command per stream over the job's range, the URL from the shell
        commands = [
            shlex.split(line)
            for line in (path / "cryo.args").read_text().splitlines()
            if line.startswith("cryo ")
        ]
        assert [c[1] for c in commands] == ["blocks", "logs"]
        for c in commands:
            assert c[c.index("--blocks") + 1] == "0:2000"
            assert c[c.index("--chunk-size") + 1] == "100"
            assert c[-2:] == ["--rpc", "${TRACE_RPC_POOL_COMP_URL}"]

        _edit(
            path,
            translation={
                "group_name": "chain_{{ chain_id }}",
                "tags": {"team": "data"},
                "metadata": {"dataset": "{{ dataset }}", "stream": "{{ stream }}"},
            },
        )
        doc = yaml.safe_load((path / "defs.yaml").read_text())
        doc["post_processing"] = {
            "assets": [{"target": "*", "attributes": {"owners": ["team:chain-data"]}}]
        }
        (path / "defs.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        with sandbox.load_component_and_build_defs(defs_path=path) as (component, defs):
            assert isinstance(component, ChainSyncComponent)
            graph = defs.resolve_asset_graph()
            keys = {AssetKey(["chain_sync", "my_chain", k]) for k in ("blocks", "logs")}
            # the stream assets, and the external asset of the sensors' health checks
            assert set(graph.get_all_asset_keys()) == keys | {SENSORS_ASSET}
            node = graph.get(AssetKey(["chain_sync", "my_chain", "logs"]))
            assert node.group_name == "chain_31337"
            assert node.tags["team"] == "data" and node.tags["trace/stream"] == "logs"
            assert node.metadata["dataset"] == "logs" and node.metadata["epoch_blocks"] == 200
            assert node.owners == ["team:chain-data"]  # post_processing
            assert node.partitions_def is not None
            assert node.partitions_def.name == "my_chain__logs__epochs"  # type: ignore[attr-defined]
            sensors = {s.name for s in defs.sensors or []}
            assert {"trace_apply__my_chain", "trace_dispatcher", "trace_worker_wakeups"} <= sensors

        _edit(path, translation={"key": "elsewhere/{{ stream }}"})
        with (
            pytest.raises(Exception) as err,
            sandbox.load_component_and_build_defs(defs_path=path),
        ):
            pass
        assert _cause(err.value, ConfigError).field == "attributes.translation.key"


def _cause(exc: BaseException, kind: type[E]) -> E:
    seen: BaseException | None = exc
    while seen is not None and not isinstance(seen, kind):
        seen = seen.__cause__ or seen.__context__
    assert isinstance(seen, kind), f"no {kind.__name__} in {exc!r}"
    return seen


def test_a_wrong_field_is_named_with_its_defs_yaml_line() -> None:
    with create_defs_folder_sandbox() as sandbox:
        path = _scaffold(sandbox)
        text = (path / "defs.yaml").read_text()
        bad = text.replace("max_inflight: 4\n    logs:", "max_inflite: 4\n    logs:")
        (path / "defs.yaml").write_text(bad)
        line = bad.splitlines().index("      max_inflite: 4") + 1
        with (
            pytest.raises(Exception) as err,
            sandbox.load_component_and_build_defs(defs_path=path),
        ):
            pass
        problems = _cause(err.value, InvalidJobFile).problems
        wrong = [p for p in problems if p.field == "attributes.streams.blocks.max_inflite"]
        assert len(wrong) == 1 and wrong[0].line == line
        assert str(wrong[0]).endswith(f"defs.yaml:{line}: {wrong[0].field}: unknown field")


def test_dg_check_defs_names_the_wrong_field(tmp_path: Path) -> None:
    """The real CLI in a real project layout (one ``dg`` subprocess, about 6 s)."""
    (tmp_path / "pyproject.toml").write_text(
        textwrap.dedent("""
            [project]
            name = "chains"
            version = "0.1.0"
            [tool.dg]
            directory_type = "project"
            [tool.dg.project]
            root_module = "chains"
        """)
    )
    defs = tmp_path / "src" / "chains" / "defs"
    (defs / "my_chain").mkdir(parents=True)
    (tmp_path / "src" / "chains" / "__init__.py").write_text("")
    (defs / "__init__.py").write_text("")
    (tmp_path / "src" / "chains" / "definitions.py").write_text(
        "from pathlib import Path\n"
        "from dagster import definitions, load_from_defs_folder\n\n\n"
        "@definitions\n"
        "def defs():\n"
        "    return load_from_defs_folder(path_within_project=Path(__file__).parent)\n"
    )
    (defs / "my_chain" / "defs.yaml").write_text(
        textwrap.dedent("""
            type: trace_dagster.ChainSyncComponent
            attributes:
              name: my_chain
              chain_id: 31337
              mode: {kind: fixed_target, from_block: 0, to_block: 2000}
              streams:
                blocks: {cryo_dataset_name: blockz, rpc_pool: comp, chunk_size: 100, max_inflight: 4}
        """).lstrip()
    )
    dg = Path(sys.executable).parent / "dg"
    out = subprocess.run(
        [str(dg), "check", "defs"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert out.returncode != 0
    wrong = "defs.yaml:7: attributes.streams.blocks.cryo_dataset_name: unknown cryo dataset"
    assert f"{wrong} 'blockz'" in out.stdout + out.stderr


@pytest.mark.slow
def test_the_component_asset_materializes_an_epoch_on_anvil(
    trace_env: Runtime,
    dagster_instance: DagsterInstance,
    anvil_chain: DevChain,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TRACE_RPC_POOL_COMP_URL", anvil_chain.rpc_url)
    monkeypatch.setenv("TRACE_RPC_POOL_COMP_MAX_CONCURRENT", "3")
    rt = trace_env
    with create_defs_folder_sandbox() as sandbox:
        path = _scaffold(sandbox, chain_id=anvil_chain.chain_id, datasets=["blocks"])
        with sandbox.load_component_and_build_defs(defs_path=path) as (_, defs):
            [apply] = [s for s in defs.sensors or [] if s.name == "trace_apply__my_chain"]
            for verb in ("created", "unchanged"):  # applying the same job again writes nothing
                with build_sensor_context(
                    instance=dagster_instance, resources={"trace": TRACE_RESOURCE}
                ) as ctx:
                    got = apply(ctx)
                assert isinstance(got, SkipReason) and f"job my_chain {verb}" in str(
                    got.skip_message
                )
            # the RPC pool's limit is the Dagster pool's slots; one epoch per backfill run
            info = dagster_instance.event_log_storage.get_concurrency_info("trace_rpc_comp")
            assert info.slot_count == 3
            # the dispatcher plans the job's ranges and makes its epochs partitions
            planned = dispatcher_result(rt, None, dagster_instance, now=1000.0)
            assert isinstance(planned, SensorResult)
            _apply_partitions(dagster_instance, planned)
            [asset] = [
                a
                for a in defs.assets or []
                if isinstance(a, AssetsDefinition)
                and AssetKey(["chain_sync", "my_chain", "blocks"]) in a.keys
            ]
            assert asset.backfill_policy == BackfillPolicy.multi_run(max_partitions_per_run=1)
            assert asset.op.pool == "trace_rpc_comp"
            checks = [k for c in defs.asset_checks or [] for k in c.check_keys]
            assert [k.name for k in checks if k.asset_key == asset.key] == ["integrity"]
            result = materialize(
                [asset],
                partition_key="000000000000-000000000200",
                instance=dagster_instance,
                resources={"trace": TRACE_RESOURCE},
            )
    assert result.success
    [mat] = result.asset_materializations_for_node(asset.op.name)
    assert mat.metadata["ranges_run"].value == 2 and mat.metadata["rows"].value == 200
    with rt.state() as conn:
        ranges = store.list_ranges(conn, store.resolve_job(conn, rt.settings.org_id, "my_chain"))
    done = sorted(r.range_start for r in ranges if r.status == "completed")
    assert done == [0, 100]


def test_two_components_share_one_trace_runtime() -> None:
    with create_defs_folder_sandbox() as sandbox:
        sandbox.scaffold_component(ChainSyncComponent, defs_path="chain_a")
        second = sandbox.scaffold_component(
            ChainSyncComponent, defs_path="chain_b", scaffold_params={"rpc_pool": "other"}
        )
        _edit(second, include_runtime=False)
        with sandbox.build_all_defs() as defs:
            sensors = sorted(s.name for s in defs.sensors or [])
            keys = defs.resolve_asset_graph().get_all_asset_keys()
        assert sensors.count("trace_dispatcher") == 1
        assert {"trace_apply__chain_a", "trace_apply__chain_b"} <= set(sensors)
        assert {k.path[1] for k in keys if k != SENSORS_ASSET} == {"chain_a", "chain_b"}
