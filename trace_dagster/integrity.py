"""The integrity check in the UI: a partitioned asset check per stream asset, fed by the
scheduled ``trace_integrity`` sensor (run-less check evaluations per range partition) and
runnable per partition from the UI. All logic lives in ``trace_core.integrity``."""

# No `from __future__ import annotations` here: Dagster resolves sensor annotations at runtime.
import json
import time

from dagster import (
    AssetCheckEvaluation,
    AssetCheckExecutionContext,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetCheckSpec,
    DagsterInstance,
    DagsterInvariantViolationError,
    DefaultSensorStatus,
    DynamicPartitionsDefinition,
    Failure,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    multi_asset_check,
    sensor,
)

from trace_core.integrity.verify import RangeResult, integrity_tick, select_streams, verify_stream
from trace_core.runtime import Runtime
from trace_dagster.partitions import partitions_def_name, stream_asset_key
from trace_dagster.resources import TraceResource

CHECK_NAME = "integrity"
SENSOR_NAME = "trace_integrity"
# Between ticks of a pass; a pass starts every TRACE_INTEGRITY_INTERVAL_SECONDS.
TICK_SECONDS = 30
MAX_FINDINGS_SHOWN = 20


def check_metadata(result: RangeResult) -> dict[str, str | int]:
    lines = [f.line() for f in result.findings]
    return {
        "dataset_version": result.dataset_version or "",
        "block_range": f"[{result.range_start}, {result.range_end})",
        "findings": len(lines),
        "details": "\n".join(lines[:MAX_FINDINGS_SHOWN]) or "ok",
    }


def check_evaluation(result: RangeResult) -> AssetCheckEvaluation:
    """A range's verdict as a run-less check evaluation of its stream partition."""
    return AssetCheckEvaluation(
        asset_key=stream_asset_key(result.job_name, result.dataset_key),
        check_name=CHECK_NAME,
        passed=result.passed,
        partition=result.partition_key,
        severity=AssetCheckSeverity.ERROR,
        metadata=check_metadata(result),
        description=None if result.passed else result.findings[0].line(),
    )


def integrity_result(
    rt: Runtime,
    cursor: str | None,
    instance: DagsterInstance | None,
    now: float | None = None,
) -> SensorResult:
    """One sensor tick: a bounded step of the current pass, or a skip until the next pass.

    The cursor is JSON ``{"pos": <trace_core cursor>, "next_pass_at": epoch}``; the first
    pass starts one interval after the sensor first runs. Evaluations are emitted only for
    ranges that are partitions in ``instance`` (all of them without an instance).
    """
    now = time.time() if now is None else now
    state = json.loads(cursor) if cursor else {}
    pos = state.get("pos", "")
    next_pass_at = float(state.get("next_pass_at", now + rt.settings.integrity_interval_seconds))
    if not pos and now < next_pass_at:
        return SensorResult(
            skip_reason=f"next integrity pass in {next_pass_at - now:.0f}s",
            cursor=json.dumps({"pos": "", "next_pass_at": next_pass_at}),
        )
    report, pos = integrity_tick(rt, pos, rt.settings.integrity_ranges_per_tick)
    if not pos:
        next_pass_at = now + rt.settings.integrity_interval_seconds
    next_cursor = json.dumps({"pos": pos, "next_pass_at": next_pass_at})
    if report is None:
        return SensorResult(skip_reason="integrity pass complete", cursor=next_cursor)
    results = report.ranges
    if instance is not None:
        known = set(
            instance.get_dynamic_partitions(
                partitions_def_name(report.job_name, report.dataset_key)
            )
        )
        results = [r for r in results if r.partition_key in known]
    return SensorResult(asset_events=[check_evaluation(r) for r in results], cursor=next_cursor)


def integrity_sensor() -> SensorDefinition:
    @sensor(
        name=SENSOR_NAME,
        minimum_interval_seconds=TICK_SECONDS,
        default_status=DefaultSensorStatus.RUNNING,
        description=(
            "Scheduled integrity_check: re-verifies committed ranges (files vs manifests, "
            "contiguity, parent hashes, tx/log counts vs the RPC) and reports each range's "
            "`integrity` check on its stream partition"
        ),
    )
    def _integrity(
        context: SensorEvaluationContext, trace: TraceResource
    ) -> SensorResult | SkipReason:
        try:
            instance: DagsterInstance | None = context.instance
        except DagsterInvariantViolationError:  # a context built in a test without an instance
            instance = None
        return integrity_result(trace.get_client(), context.cursor, instance)

    return _integrity


def _stream_check(job_name: str, dataset_key: str) -> AssetChecksDefinition:
    key = stream_asset_key(job_name, dataset_key)
    partitions = partitions_def_name(job_name, dataset_key)
    spec = AssetCheckSpec(
        CHECK_NAME,
        asset=key,
        partitions_def=DynamicPartitionsDefinition(name=partitions),
        description="Files match the manifest (sha256, rows); blocks contiguous; hashes and "
        "tx/log counts match the chain. `trace-lite verify --repair` re-syncs a failing range.",
    )

    # can_subset: the run yields no whole-check result. Dagster 1.13 cannot run a partitioned
    # check of an external asset in a partitioned run (no job shares the partitions), so each
    # range's verdict is reported on its partition as a run-less evaluation instead.
    @multi_asset_check(specs=[spec], name=f"integrity__{partitions}", can_subset=True)
    def _check(context: AssetCheckExecutionContext, trace: TraceResource):  # type: ignore[no-untyped-def]
        """Run from the UI: verify every committed range now; each range's verdict lands on its
        partition; the run fails when any range is broken."""
        rt = trace.get_client()
        stream = next(s for s in select_streams(rt, job_name) if s.dataset_key == dataset_key)
        report = verify_stream(rt, stream)
        known = set(context.instance.get_dynamic_partitions(partitions))
        for r in report.ranges:
            if r.partition_key in known:
                context.instance.report_runless_asset_event(check_evaluation(r))
        for note in report.notes:
            context.log.warning(note)
        context.log.info(f"integrity: {len(report.ranges)} ranges, {len(report.findings)} findings")
        if not report.passed:
            lines = [f.line() for f in report.findings]
            raise Failure(
                description=f"{len(lines)} integrity finding(s); `trace-lite verify --job "
                f"{job_name} --stream {dataset_key} --repair` re-syncs them",
                metadata={"details": "\n".join(lines[:MAX_FINDINGS_SHOWN])},
            )
        return iter(())

    return _check


def stream_integrity_checks(rt: Runtime) -> list[AssetChecksDefinition]:
    """One partitioned ``integrity`` check per applied stream (empty if state is unreachable)."""
    import psycopg

    from trace_core.errors import TraceError

    try:
        streams = select_streams(rt)
    except (TraceError, psycopg.Error):
        return []
    return [_stream_check(s.job_name, s.dataset_key) for s in streams]
