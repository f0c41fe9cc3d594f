"""The integrity check in the UI: a partitioned asset check per stream asset, fed by runs of
``trace_integrity_pass`` that the scheduled ``trace_integrity`` sensor requests (one
evaluation per epoch partition, over the ranges of that epoch checked in the pass), and
runnable from the UI. All logic lives in
``trace_core.integrity``."""

# No `from __future__ import annotations` here: Dagster resolves sensor annotations at runtime.
from collections.abc import Callable
from dataclasses import dataclass, field

from dagster import (
    AssetCheckEvaluation,
    AssetCheckExecutionContext,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    AssetRecordsFilter,
    DagsterInstance,
    DynamicPartitionsDefinition,
    Failure,
    OpExecutionContext,
    job,
    multi_asset_check,
    op,
)
from dagster._core.definitions.asset_checks.asset_check_evaluation import (  # not exported
    AssetCheckEvaluationTargetMaterializationData,
)

from trace_core.engine import orgs
from trace_core.engine.integrity import (
    RangeResult,
    compact_streams,
    pass_reports,
    scheduled_retention,
    select_streams,
)
from trace_core.engine.streams import StreamRow, epoch_keys_of_range
from trace_core.errors import TraceError
from trace_core.runtime import Runtime
from trace_dagster.partitions import partitions_def_name, stream_asset_key
from trace_dagster.resources import TraceResource
from trace_dagster.service_runs import KIND_TAG

CHECK_NAME = "integrity"
SENSOR_NAME = "trace_integrity"
INTEGRITY_JOB = "trace_integrity_pass"
# How often the sensor looks whether a pass is due; one starts every
# TRACE_INTEGRITY_INTERVAL_SECONDS, as a run of INTEGRITY_JOB.
TICK_SECONDS = 30
MAX_FINDINGS_SHOWN = 20


def check_evaluation(
    job_name: str,
    dataset_key: str,
    epoch_key: str,
    results: list[RangeResult],
    target: AssetCheckEvaluationTargetMaterializationData | None = None,
    prefix: str | None = None,
) -> AssetCheckEvaluation:
    """The verdicts on an epoch's ranges as one evaluation of its partition: it passes when
    every range checked in this pass passed. ``target`` is the partition's latest
    materialization: Dagster shows a partition's check status only while the evaluation
    targets it (without it, a materialized epoch's check stays "missing")."""
    lines = [f.line() for r in results for f in r.findings]
    failed = [r for r in results if not r.passed]
    return AssetCheckEvaluation(
        asset_key=stream_asset_key(job_name, dataset_key, prefix),
        check_name=CHECK_NAME,
        passed=not failed,
        partition=epoch_key,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "ranges_checked": len(results),
            "ranges_failed": len(failed),
            "findings": len(lines),
            "failed_ranges": ", ".join(r.partition_key for r in failed[:MAX_FINDINGS_SHOWN]),
            "details": "\n".join(lines[:MAX_FINDINGS_SHOWN]) or "ok",
        },
        description=lines[0] if lines else None,
        target_materialization_data=target,
    )


def latest_materialization(
    instance: DagsterInstance, asset_key: AssetKey, partition: str
) -> AssetCheckEvaluationTargetMaterializationData | None:
    """A pointer to the partition's latest materialization (None: never materialized)."""
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=asset_key, asset_partitions=[partition]), limit=1
    ).records
    if not records:
        return None
    r = records[0]
    return AssetCheckEvaluationTargetMaterializationData(
        storage_id=r.storage_id, run_id=r.run_id, timestamp=r.timestamp
    )


@dataclass
class PassSummary:
    ranges: int = 0
    findings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def run_pass(
    rt: Runtime,
    instance: DagsterInstance,
    emit: Callable[[AssetCheckEvaluation], None],
    streams: list[StreamRow] | None = None,
) -> PassSummary:
    """Scheduled (``streams`` None): one incremental pass (``engine.integrity.pass_reports``:
    new and changed ranges, then a sample of the stalest, within an RPC budget). With
    ``streams`` (the check run from the UI): every committed range of them. ``emit`` one check
    evaluation per epoch partition with the verdicts of its ranges verified in this pass
    (epochs that are not partitions in ``instance`` are skipped).

    Evaluations are emitted inside a run: Dagster stores one run-less evaluation per
    partition at most, so a second pass could not report run-less ones again. ``rt`` acts for
    one org (``Runtime.for_org``): its checks are on that org's (prefixed) assets.
    """
    summary = PassSummary()
    prefix = orgs.runtime_prefix(rt)
    known: dict[str, set[str]] = {}
    sizes = {(s.job_name, s.dataset_key): s.epoch_blocks for s in select_streams(rt)}
    by_epoch: dict[tuple[str, str, str], list[RangeResult]] = {}
    for report in pass_reports(rt, streams):
        stream = (report.job_name, report.dataset_key)
        for r in report.ranges:
            for key in epoch_keys_of_range(r.range_start, r.range_end, sizes[stream]):
                by_epoch.setdefault((*stream, key), []).append(r)
        summary.ranges += len(report.ranges)
        summary.findings += [f.line() for f in report.findings]
        summary.notes += list(report.notes)
    for (job_name, dataset_key, key), results in sorted(by_epoch.items()):
        name = partitions_def_name(job_name, dataset_key, prefix)
        if name not in known:
            known[name] = set(instance.get_dynamic_partitions(name))
        if key in known[name]:
            asset = stream_asset_key(job_name, dataset_key, prefix)
            target = latest_materialization(instance, asset, key)
            emit(check_evaluation(job_name, dataset_key, key, results, target, prefix))
    return summary


def _fail_on_findings(summary: PassSummary, repair: str) -> None:
    if summary.findings:
        raise Failure(
            description=f"{len(summary.findings)} integrity finding(s); `{repair}` re-syncs them",
            metadata={"details": "\n".join(summary.findings[:MAX_FINDINGS_SHOWN])},
        )


@op(
    name="integrity_pass",
    description="Verify new and changed ranges plus a sample of older ones within an RPC budget; "
    "the verdicts land on their epoch partition's `integrity` check; the run fails when a "
    "range is broken",
)
def integrity_pass(context: OpExecutionContext, trace: TraceResource) -> None:
    summary = PassSummary()
    for rt in orgs.work_runtimes(trace.get_client()):  # every org's streams, as that org
        got = run_pass(rt, context.instance, context.log_event)  # type: ignore[arg-type]  # log_event takes check evaluations too
        summary.ranges += got.ranges
        summary.findings += got.findings
        summary.notes += got.notes
        # compaction and retention ride on the same maintenance run: finished epochs become
        # one version each, superseded versions past the grace period go
        if rt.settings.compact_windows_per_pass:
            for stream, report in compact_streams(rt, limit=rt.settings.compact_windows_per_pass):
                if report.windows:
                    context.log.info(f"{stream.job_name}/{stream.dataset_key}: {report.line()}")
        collected = scheduled_retention(rt)
        context.log.info(collected.lines()[0])
    for note in summary.notes:
        context.log.warning(note)
    context.log.info(f"integrity: {summary.ranges} ranges, {len(summary.findings)} findings")
    _fail_on_findings(summary, "trace-lite verify --repair")


@job(
    name=INTEGRITY_JOB,
    description="Scheduled integrity_check of every committed range (see trace_integrity)",
    tags={KIND_TAG: "maintenance"},
)
def integrity_job() -> None:
    integrity_pass()


def _stream_check(
    job_name: str, dataset_key: str, prefix: str | None = None, org_id: str | None = None
) -> AssetChecksDefinition:
    key = stream_asset_key(job_name, dataset_key, prefix)
    partitions = partitions_def_name(job_name, dataset_key, prefix)
    spec = AssetCheckSpec(
        CHECK_NAME,
        asset=key,
        partitions_def=DynamicPartitionsDefinition(name=partitions),
        description="Files match the manifest (sha256, rows); blocks contiguous; hashes and "
        "tx/log counts match the chain. `trace-lite verify --repair` re-syncs a failing range. "
        "Passes run soon after ranges commit (the trace_integrity sensor). Dagster disables "
        "this check's own Execute on partitioned assets: use Execute all, which verifies every "
        "committed range of the stream now.",
    )

    # can_subset: the run yields no whole-check result. A partitioned check of these assets
    # cannot run in a partitioned run of its own here, so each range's verdict is logged as an
    # evaluation of its partition from inside this run.
    @multi_asset_check(specs=[spec], name=f"integrity__{partitions}", can_subset=True)
    def _check(context: AssetCheckExecutionContext, trace: TraceResource):  # type: ignore[no-untyped-def]
        """Run from the UI: verify every committed range of the stream now; the verdicts land
        on their epoch partitions; the run fails when any range is broken."""
        rt = trace.get_client().for_org(org_id)
        streams = [s for s in select_streams(rt, job_name) if s.dataset_key == dataset_key]
        emit = context.op_execution_context.log_event  # it takes check evaluations too
        summary = run_pass(rt, context.instance, emit, streams)  # type: ignore[arg-type]
        for note in summary.notes:
            context.log.warning(note)
        context.log.info(f"integrity: {summary.ranges} ranges, {len(summary.findings)} findings")
        _fail_on_findings(
            summary, f"trace-lite verify --job {job_name} --stream {dataset_key} --repair"
        )
        return iter(())

    return _check


def stream_integrity_checks(rt: Runtime) -> list[AssetChecksDefinition]:
    """One partitioned ``integrity`` check per applied stream of every org (empty if state is
    unreachable)."""
    try:
        streams = [
            (s, orgs.runtime_prefix(o), str(o.settings.org_id))
            for o in orgs.work_runtimes(rt)
            for s in select_streams(o)
        ]
    except TraceError:
        return []
    return [_stream_check(s.job_name, s.dataset_key, p, org) for s, p, org in streams]
