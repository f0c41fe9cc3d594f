"""``trace_analytics``: each tick, the analytics runs that newly committed input ranges make
due (``trace_core.analytics.plan``), each run key requested once."""

# No `from __future__ import annotations` here: Dagster resolves sensor annotations at runtime.
import json
from collections.abc import Sequence

from dagster import (
    DagsterInstance,
    DefaultSensorStatus,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from trace_core.engine import orgs
from trace_core.engine.analytics import due_runs
from trace_core.engine.intake import ORG_TAG
from trace_core.engine.streams import epoch_key, range_partition_key
from trace_core.errors import TraceError
from trace_core.runtime import Runtime
from trace_dagster.analytics import RANGE_TAG, AssetJob, job_name
from trace_dagster.partitions import partitions_def_name
from trace_dagster.resources import TraceResource
from trace_dagster.sensors.common import instance_of

SENSOR = "trace_analytics"
MAX_REQUESTS_PER_TICK = 20
CURSOR_KEYS = 1000


def due_requests(
    rt: Runtime, instance: DagsterInstance | None, done: Sequence[str]
) -> tuple[list[RunRequest], list[str]]:
    """Run requests for due analytics work of every org not requested before (``done`` run
    keys; another org's keys and job names carry its key prefix), ``MAX_REQUESTS_PER_TICK``
    over all orgs."""
    seen = set(done)
    requests: list[RunRequest] = []
    for org_rt in orgs.work_runtimes(rt):
        prefix = orgs.runtime_prefix(org_rt)
        org = str(org_rt.settings.org_id)
        sizes, due = due_runs(org_rt)
        for job, run in due:
            run_key = f"{prefix}/{run.run_key}" if prefix else run.run_key
            if run_key in seen or len(requests) >= MAX_REQUESTS_PER_TICK:
                continue
            partition = None
            tags = {"trace/job": job.job, "trace/analytics": run.kind, ORG_TAG: org}
            if run.kind.endswith("_range"):
                assert run.start is not None and run.end is not None
                stream = str(
                    job.spec.balance_diffs if run.kind == "balance_range" else job.spec.staking.logs  # type: ignore[union-attr]
                )
                # the range's epoch is the partition; the run computes just this range
                partition = epoch_key(run.start, sizes[(job.job, stream)])
                tags[RANGE_TAG] = range_partition_key(run.start, run.end)
                name = partitions_def_name(job.job, stream, prefix)
                if instance is not None and not instance.has_dynamic_partition(name, partition):
                    continue  # not a chain_sync epoch yet
            requests.append(
                RunRequest(
                    run_key=run_key,
                    job_name=job_name(job.job, run.kind, prefix),
                    partition_key=partition,
                    tags=tags,
                )
            )
            seen.add(run_key)
    return requests, [*done, *(r.run_key for r in requests if r.run_key)][-CURSOR_KEYS:]


def analytics_sensor(jobs: Sequence[AssetJob]) -> SensorDefinition:
    """``trace_analytics``: each tick, requests the analytics runs that committed input
    ranges make due (per range first, then the roll-ups), each run key once."""

    @sensor(
        name=SENSOR,
        jobs=list(jobs) or None,
        minimum_interval_seconds=10,
        default_status=DefaultSensorStatus.RUNNING,
        description="Materializes analytics partitions for newly committed ranges, then roll-ups",
    )
    def _sensor(
        context: SensorEvaluationContext, trace: TraceResource
    ) -> SensorResult | SkipReason:
        if not jobs:
            return SkipReason("no chain_sync job has an analytics: block")
        done = json.loads(context.cursor) if context.cursor else []
        try:
            requests, cursor = due_requests(trace.get_client(), instance_of(context), done)
        except TraceError as exc:
            return SkipReason(f"analytics planning failed: {exc}")
        if not requests:
            return SkipReason("no analytics work is due")
        return SensorResult(run_requests=requests, cursor=json.dumps(cursor))

    return _sensor
