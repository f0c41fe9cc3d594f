"""Reviving on request, for the shell: a re-executed worker run revives its batch's dead tasks,
a materialized stream partition runs its range now (reviving it if dead).

The state work is ``chain_sync.revive`` (revive, rerun preparation, range preparation); this
module opens the connection and executes. ``trace-lite retry`` is the CLI's way in.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from trace_core.chain_sync import revive as chain_sync_revive
from trace_core.chain_sync.revive import SOURCE_RERUN, RerunPreparation, prepare_rerun
from trace_core.engine.execute import TaskOutcome, execute_task
from trace_core.operators.base import OperatorRegistry
from trace_core.operators.cryo_payload import OPERATOR as CRYO_INGEST
from trace_core.runtime import Runtime


def revive_for_rerun(rt: Runtime, task_ids: list[str], *, detail: str) -> RerunPreparation:
    """Before a re-executed run executes its batch: revive the dead tasks (fresh budget, range
    rescheduled) and make backed-off retries due now. Their outbox wake-ups are delayed by one
    lease, a backstop in case this run dies before claiming them."""
    with rt.state() as conn, conn.transaction():
        return prepare_rerun(
            conn,
            [uuid.UUID(t) for t in task_ids],
            source=SOURCE_RERUN,
            detail=detail,
            wake_delay_seconds=rt.settings.lease_seconds,
        )


@dataclass(frozen=True)
class RangeRun:
    """A range executed on request (the stream asset's partition): the task's outcome, whether
    the range was revived first, and whether it had already committed (nothing ran)."""

    outcome: TaskOutcome
    revived: bool = False
    already_committed: bool = False


def run_range(
    rt: Runtime,
    job_name: str,
    dataset_key: str,
    partition_key: str,
    *,
    detail: str | None = None,
    registry: OperatorRegistry | None = None,
) -> RangeRun:
    """Execute the range behind a stream partition now: revive its task if dead, claim and run
    it in this process. A committed range is reported as is. Raises ``ChainSyncJobNotFound``/
    ``UnknownStream``/``UnknownRange`` for a partition that is no planned range; task failures
    come back in the outcome, never raised."""
    prepared = chain_sync_revive.prepare_range(
        rt, job_name, dataset_key, partition_key, detail=detail
    )
    if prepared.committed is not None:
        row = prepared.committed
        done = TaskOutcome(
            row["task_id"],
            "succeeded",
            row["attempt"],
            CRYO_INGEST,
            row["payload"] or {},
            row["outputs"] or {},
        )
        return RangeRun(done, already_committed=True)
    outcome = execute_task(rt, prepared.task_id, registry)
    return RangeRun(outcome, revived=prepared.revived)
