"""What the Dagster UI loads, read through Dagster's own GraphQL schema (dagster-graphql's test
helpers) against a workspace that serves Trace's definitions in process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from dagster import AssetKey, DagsterInstance
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.test_utils import InProcessTestWorkspaceLoadTarget, in_process_test_workspace
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext, WorkspaceRequestContext
from dagster_graphql.test.utils import execute_dagster_graphql, infer_sensor_selector

import trace_dagster.definitions
from trace_core.runtime import Runtime
from trace_core.settings import REPO_ROOT
from trace_dagster.definitions import build_definitions


@contextmanager
def ui_process(
    instance: DagsterInstance, rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> Iterator[WorkspaceProcessContext]:
    """The webserver's (and daemon's) process context over Trace's definitions for ``rt``."""
    monkeypatch.setitem(vars(trace_dagster.definitions), "defs", build_definitions(rt))
    origin = LoadableTargetOrigin(
        module_name="trace_dagster.definitions",
        attribute="defs",
        working_directory=str(REPO_ROOT),
    )
    with WorkspaceProcessContext(
        instance, InProcessTestWorkspaceLoadTarget(InProcessCodeLocationOrigin(origin))
    ) as process:
        yield process


@contextmanager
def ui_context(
    instance: DagsterInstance, rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> Iterator[WorkspaceRequestContext]:
    """A GraphQL request context over ``trace_dagster.definitions:defs`` built for ``rt`` (as
    the webserver loads it from workspace.yaml)."""
    monkeypatch.setitem(vars(trace_dagster.definitions), "defs", build_definitions(rt))
    with (
        in_process_test_workspace(
            instance,
            LoadableTargetOrigin(
                module_name="trace_dagster.definitions",
                attribute="defs",
                working_directory=str(REPO_ROOT),
            ),
        ) as ctx,
        ctx,
    ):  # entered as the webserver enters it per request (partition loading)
        yield ctx


def gql(ctx: WorkspaceRequestContext, query: str, **variables: Any) -> dict[str, Any]:
    result = execute_dagster_graphql(ctx, query, variables)
    assert not result.errors, result.errors
    assert result.data is not None
    return dict(result.data)


def _key(asset: AssetKey) -> dict[str, list[str]]:
    return {"path": list(asset.path)}


PARTITIONS = """
query ($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    __typename
    ... on AssetNode {
      assetPartitionStatuses {
        ... on DefaultPartitionStatuses {
          materializedPartitions failedPartitions unmaterializedPartitions materializingPartitions
        }
      }
    }
  }
}
"""


def partition_statuses(ctx: WorkspaceRequestContext, asset: AssetKey) -> dict[str, set[str]]:
    """The asset's partitions by status, as the Partitions tab shows them."""
    node = gql(ctx, PARTITIONS, key=_key(asset))["assetNodeOrError"]
    assert node["__typename"] == "AssetNode", node
    return {k: set(v) for k, v in node["assetPartitionStatuses"].items()}


OBSERVATIONS = """
query ($key: AssetKeyInput!, $partitions: [String!]) {
  assetOrError(assetKey: $key) {
    ... on Asset {
      assetObservations(partitions: $partitions, limit: 20) {
        partition runId
        metadataEntries { label ... on TextMetadataEntry { text } }
      }
    }
  }
}
"""


def partition_events(
    ctx: WorkspaceRequestContext, asset: AssetKey, partition: str
) -> list[dict[str, str | None]]:
    """The partition's observations, newest first, each as ``{label: text}`` of its metadata
    (the partition's event list in the UI). Dagster OSS storage keeps no "failed to
    materialize" events outside the run's log, so a dead range's error lives here."""
    data = gql(ctx, OBSERVATIONS, key=_key(asset), partitions=[partition])
    return [
        {m["label"]: m.get("text") for m in o["metadataEntries"]}
        for o in data["assetOrError"]["assetObservations"]
    ]


CHECK_PARTITIONS = """
query ($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    ... on AssetNode {
      assetChecksOrError {
        ... on AssetChecks {
          checks {
            name canExecuteIndividually
            partitionStatuses {
              ... on AssetCheckDefaultPartitionStatuses {
                succeededPartitions failedPartitions inProgressPartitions
                skippedPartitions executionFailedPartitions
              }
            }
          }
        }
      }
    }
  }
}
"""


def check_partitions(
    ctx: WorkspaceRequestContext, asset: AssetKey, check: str
) -> dict[str, set[str]]:
    """The check's Partitions tab: its partitions by status."""
    node = gql(ctx, CHECK_PARTITIONS, key=_key(asset))["assetNodeOrError"]
    (found,) = [c for c in node["assetChecksOrError"]["checks"] if c["name"] == check]
    return {k: set(v) for k, v in (found["partitionStatuses"] or {}).items()}


RUNS = """
query ($filter: RunsFilter!) {
  runsOrError(filter: $filter) {
    ... on Runs { results { runId status pipelineName } }
  }
}
"""


def runs_tagged(ctx: WorkspaceRequestContext, key: str, value: str) -> list[dict[str, Any]]:
    """Runs the Runs page lists for the tag filter ``key=value``."""
    data = gql(ctx, RUNS, filter={"tags": [{"key": key, "value": value}]})
    return list(data["runsOrError"]["results"])


TICKS = """
query ($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    ... on Sensor { sensorState { ticks(limit: 5) { status skipReason error { message } } } }
  }
}
"""


def sensor_ticks(ctx: WorkspaceRequestContext, name: str) -> list[dict[str, Any]]:
    """The sensor's latest ticks (newest first) as its page lists them."""
    data = gql(ctx, TICKS, selector=infer_sensor_selector(ctx, name))
    return list(data["sensorOrError"]["sensorState"]["ticks"])


CHECK_EXECUTIONS = """
query ($key: AssetKeyInput!, $check: String!) {
  assetCheckExecutions(assetKey: $key, checkName: $check, limit: 5) {
    status evaluation { success description }
  }
}
"""


def check_executions(
    ctx: WorkspaceRequestContext, asset: AssetKey, check: str
) -> list[dict[str, Any]]:
    """The check's executions, newest first, as its page lists them."""
    data = gql(ctx, CHECK_EXECUTIONS, key=_key(asset), check=check)
    return list(data["assetCheckExecutions"])
