"""``ChainSyncComponent``: a chain_sync job declared in a Dagster project's ``defs.yaml``.

``dg scaffold defs trace_dagster.ChainSyncComponent NAME`` writes the YAML (and ``cryo.args``
beside it); loading it validates the attributes as a ``chain_sync`` job
(``trace_core.chain_sync.spec``), every problem named ``defs.yaml:line: attributes.field``.
The component builds one partitioned stream asset per stream (the same epochs, key and body
as ``trace_dagster.partitions``), the sensor ``trace_apply__<job>`` that applies the job to
Trace state (idempotent: unchanged bytes write nothing), and the Trace machinery that runs
it (dispatcher and worker sensors, ``trace_worker`` and the service jobs, the ``trace``
resource), shared by every Trace component in the project.

``translation`` changes an asset's group, tags, metadata, description, kinds or owners, with
``{{ job }}``, ``{{ stream }}``, ``{{ dataset }}``, ``{{ chain_id }}``, ``{{ rpc_pool }}`` in
scope; the key stays ``chain_sync/<job>/<stream>`` because worker runs report epochs to it.
``post_processing`` works as for every component. Subclass and override ``execute`` to wrap
the epoch run.
"""

# No `from __future__ import annotations` here: Dagster resolves annotations at runtime.
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    AssetSpec,
    DefaultSensorStatus,
    Definitions,
    DynamicPartitionsDefinition,
    MaterializeResult,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    multi_asset,
    sensor,
)
from dagster.components import Component, ComponentLoadContext, Resolvable
from dagster.components.scaffold.scaffold import scaffold_with
from dagster.components.utils.translation import TranslationFn, TranslationFnResolver

from trace_core.engine.apply import (
    ChainSyncSpec,
    LoadedYaml,
    apply_job,
    load_yaml,
    validate_job,
)
from trace_core.errors import ConfigError, InvalidJobFile
from trace_core.runtime import Runtime
from trace_dagster.components.scaffolder import ChainSyncScaffolder
from trace_dagster.integrity import _stream_check
from trace_dagster.jobs import trace_worker
from trace_dagster.partitions import materialize_epoch, partitions_def_name, stream_asset_key
from trace_dagster.pools import STREAM_BACKFILL_POLICY, dagster_pool, set_pool_limits
from trace_dagster.resources import TraceResource
from trace_dagster.sensors import service_sensors
from trace_dagster.sensors.dispatcher import dispatcher_sensor
from trace_dagster.sensors.health import sensor_health_checks, sensor_health_sensor, sensors_spec
from trace_dagster.sensors.worker import worker_sensor
from trace_dagster.service_runs import SERVICE_JOBS

_UNSAFE = re.compile(r"[^A-Za-z0-9_]")
# One resource object for every Trace component: Dagster merges identical objects only.
TRACE_RESOURCE = TraceResource()
# Attributes that configure the component rather than the chain_sync job.
_COMPONENT_FIELDS = frozenset({"translation", "include_runtime"})


@dataclass(frozen=True)
class ChainSyncStream:
    """What a translation sees of one stream."""

    job: str
    stream: str
    dataset: str
    chain_id: int
    rpc_pool: str


def _template_vars(data: ChainSyncStream) -> dict[str, Any]:
    return {
        "job": data.job,
        "stream": data.stream,
        "dataset": data.dataset,
        "chain_id": data.chain_id,
        "rpc_pool": data.rpc_pool,
    }


def spec_from_attributes(attributes: dict[str, Any], defs_yaml: Path | None) -> ChainSyncSpec:
    """Validate a component's job attributes as a chain_sync job.

    Raises ``InvalidJobFile`` with each problem at its ``defs.yaml`` line, its field prefixed
    ``attributes.`` (lines are read from ``defs_yaml`` when the component came from YAML).
    """
    job = {k: v for k, v in attributes.items() if k not in _COMPONENT_FIELDS and v is not None}
    lines: dict[tuple[str | int, ...], int] = {}
    source = "<ChainSyncComponent>"
    if defs_yaml is not None and defs_yaml.is_file():
        source = str(defs_yaml)
        whole = load_yaml(defs_yaml.read_bytes(), source=source)
        lines = {p[1:]: n for p, n in whole.lines.items() if p[:1] == ("attributes",)}
    doc = LoadedYaml(data={"kind": "chain_sync", **job}, source=source, lines=lines)
    try:
        return validate_job(doc)
    except InvalidJobFile as exc:
        raise InvalidJobFile(
            [
                ConfigError(
                    p.reason,
                    file=p.file,
                    line=p.line,
                    field=f"attributes.{p.field}" if p.field else "attributes",
                )
                for p in exc.problems
            ]
        ) from None


def job_yaml(spec: ChainSyncSpec) -> bytes:
    """The job as Trace job-file bytes (what ``trace_apply__<job>`` applies and hashes)."""
    return yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True), sort_keys=True).encode()


def apply_sensor(spec: ChainSyncSpec, source: str) -> SensorDefinition:
    """Applies the job to Trace state each tick (migrating state first, as ``trace-lite apply``
    does); the same bytes write nothing, an edit of defs.yaml lands on the next tick."""
    raw = job_yaml(spec)

    @sensor(
        name=f"trace_apply__{_UNSAFE.sub('_', spec.name)}",
        minimum_interval_seconds=30,
        default_status=DefaultSensorStatus.RUNNING,
        description=f"Applies chain_sync job {spec.name} from {source} to Trace state",
    )
    def _apply(context: SensorEvaluationContext, trace: TraceResource) -> SkipReason:
        result = apply_job(trace.get_client(), spec, raw, source)
        verb = "created" if result.created else ("updated" if result.changed else "unchanged")
        pools = set_pool_limits(context.instance, spec.pools)
        limits = ", ".join(f"{k}={v}" for k, v in sorted(pools.items())) or "defaults"
        return SkipReason(f"job {spec.name} {verb} (job_id {result.job_id}); pools: {limits}")

    return _apply


@scaffold_with(ChainSyncScaffolder)
@dataclass
class ChainSyncComponent(Component, Resolvable):
    """A Trace chain_sync job: EVM chain data extracted by cryo into versioned Parquet, one
    partitioned asset per stream, each partition an epoch of ``epoch_blocks`` blocks.

    ``dg scaffold defs trace_dagster.ChainSyncComponent my_chain`` writes ``defs.yaml`` and
    ``cryo.args`` (the same extraction as cryo CLI commands). RPC URLs never go in YAML:
    a stream names a pool whose URL is ``TRACE_RPC_POOL_<POOL>_URL``.
    """

    name: str
    chain_id: int
    mode: dict[str, Any]
    streams: dict[str, dict[str, Any]]
    epoch_blocks: int | None = None
    finality_depth: int | None = None
    max_attempts: int | None = None
    hot: dict[str, Any] | None = None
    # The shared Trace machinery (dispatcher/worker/service sensors, trace_worker and service
    # jobs): Dagster rejects the same sensor twice, so a project with several Trace components
    # sets this false on all but one.
    include_runtime: bool = True
    translation: (
        Annotated[
            TranslationFn[ChainSyncStream],
            TranslationFnResolver[ChainSyncStream](_template_vars),
        ]
        | None
    ) = None

    def job_spec(self, context: ComponentLoadContext | None = None) -> ChainSyncSpec:
        """The validated chain_sync job (``InvalidJobFile`` naming defs.yaml lines)."""
        attributes = {
            "name": self.name,
            "chain_id": self.chain_id,
            "mode": self.mode,
            "streams": self.streams,
            "epoch_blocks": self.epoch_blocks,
            "finality_depth": self.finality_depth,
            "max_attempts": self.max_attempts,
            "hot": self.hot,
        }
        defs_yaml = context.path / "defs.yaml" if context is not None else None
        return spec_from_attributes(attributes, defs_yaml)

    def asset_spec(self, spec: ChainSyncSpec, dataset_key: str) -> AssetSpec:
        """The stream's asset spec after ``translation``. Raises ``ConfigError`` if the
        translation changed the key or the partitions."""
        s = spec.streams[dataset_key]
        base = AssetSpec(
            key=stream_asset_key(spec.name, dataset_key),
            partitions_def=DynamicPartitionsDefinition(
                name=partitions_def_name(spec.name, dataset_key)
            ),
            group_name=_UNSAFE.sub("_", spec.name),
            description=(
                f"cryo dataset `{s.cryo_dataset_name}` of chain {spec.chain_id} (job "
                f"{spec.name}); each partition is an epoch of {spec.epoch_size} blocks. "
                "Materializing a partition runs its uncommitted ranges now, reviving dead ones."
            ),
            kinds={"parquet", "cryo"},
            metadata={
                "chain_id": spec.chain_id,
                "rpc_pool": s.rpc_pool,
                "cryo_dataset": s.cryo_dataset_name,
                "chunk_size": s.chunk_size,
                "epoch_blocks": spec.epoch_size,
            },
            tags={"trace/job": _UNSAFE.sub("_", spec.name), "trace/stream": dataset_key},
        )
        if self.translation is None:
            return base
        data = ChainSyncStream(
            spec.name, dataset_key, s.cryo_dataset_name, spec.chain_id, s.rpc_pool
        )
        out = self.translation(base, data)
        if out.key != base.key:
            raise ConfigError(
                f"cannot change the asset key to {out.key.to_user_string()!r}: worker runs "
                f"report epochs to {base.key.to_user_string()!r}; use group_name, tags or "
                "metadata",
                field="attributes.translation.key",
            )
        if out.partitions_def != base.partitions_def:
            raise ConfigError(
                "cannot change partitions_def: a stream's partitions are its epochs",
                field="attributes.translation.partitions_def",
            )
        return out

    def execute(
        self, context: AssetExecutionContext, rt: Runtime, job_name: str, dataset_key: str
    ) -> MaterializeResult:
        """Run every uncommitted range of the partition's epoch; override to wrap it."""
        return materialize_epoch(context, rt, job_name, dataset_key)

    def build_asset(self, spec: ChainSyncSpec, dataset_key: str) -> AssetsDefinition:
        asset_spec = self.asset_spec(spec, dataset_key)
        job_name = spec.name

        # one epoch per run, so a backfill of many epochs is many runs, each holding one slot of
        # its RPC pool's Dagster pool (materialize_epoch runs one partition's ranges)
        @multi_asset(
            name=_UNSAFE.sub("_", f"chain_sync__{job_name}__{dataset_key}"),
            specs=[asset_spec],
            pool=dagster_pool(spec.streams[dataset_key].rpc_pool),
            backfill_policy=STREAM_BACKFILL_POLICY,
        )
        def _stream(context: AssetExecutionContext, trace: TraceResource) -> MaterializeResult:
            return self.execute(context, trace.get_client(), job_name, dataset_key)

        return _stream

    def build_defs(self, context: ComponentLoadContext) -> Definitions:
        spec = self.job_spec(context)
        shared = self.include_runtime
        return Definitions(
            assets=[
                *(self.build_asset(spec, key) for key in spec.streams),
                *([sensors_spec] if shared else []),
            ],
            asset_checks=[
                *(_stream_check(spec.name, key) for key in spec.streams),
                *([sensor_health_checks] if shared else []),
            ],
            jobs=[trace_worker, *SERVICE_JOBS] if shared else [],
            sensors=[
                apply_sensor(spec, str(context.path / "defs.yaml")),
                *(
                    [dispatcher_sensor, worker_sensor, sensor_health_sensor, *service_sensors]
                    if shared
                    else []
                ),
            ],
            resources={"trace": TRACE_RESOURCE},
        )
