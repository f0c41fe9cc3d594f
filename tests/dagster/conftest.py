"""Dagster-side fixtures: Trace settings in the environment (as users configure it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from dagster import DagsterInstance, JobDefinition, RunRequest, instance_for_test


@pytest.fixture
def dagster_instance() -> Iterator[DagsterInstance]:
    with instance_for_test() as instance:
        yield instance


def run_one_step(job: JobDefinition, request: RunRequest, instance: DagsterInstance) -> None:
    """Execute a service run a sensor requested, for one step (as the driver does)."""
    from trace_dagster.resources import TraceResource
    from trace_dagster.service_runs import one_step

    run = job.execute_in_process(
        run_config=one_step(request.run_config),
        instance=instance,
        tags=dict(request.tags),
        resources={"trace": TraceResource()},
    )
    assert run.success
