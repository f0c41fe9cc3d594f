"""GET /metrics on a real Query Service over real Postgres state (pgqueue) and moto's SQS."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from psycopg_pool import ConnectionPool

from tests.integration.test_planner import ORG, apply, complete, follow_job
from tests.integration.test_query_service import audit_rows, serving
from trace_core import outbox
from trace_core.chain_sync import planner, range_outcomes
from trace_core.chain_sync.head import record_head_observation
from trace_core.db.connection import Databases, connect
from trace_core.query.app import create_app
from trace_core.query.client import local_user_token
from trace_core.query.metrics import TraceCollector
from trace_core.queue.base import BUFFER_QUEUE, TASK_WAKEUP
from trace_core.queue.pgqueue import PgQueue
from trace_core.queue.sqs import SqsQueue
from trace_core.settings import Settings
from trace_core.storage.local import LocalStore
from trace_core.tasks import RetryPolicy, claim, complete_failure

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: httpx.Client) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


@pytest.fixture
def client(settings: Settings, dbs: Databases, trace_home: Path) -> Iterator[httpx.Client]:
    store = LocalStore(trace_home / "objects")
    with serving(create_app(settings, dbs, store, hot_sources=None)) as c:
        yield c


def test_metrics_report_ranges_lag_tasks_queues_and_query_latency(
    client: httpx.Client, settings: Settings, dbs: Databases
) -> None:
    with connect(dbs.state_url, autocommit=True) as conn:
        apply(conn, follow_job(tail_lag=5, chunk=40))
        with conn.transaction():
            record_head_observation(
                conn, org_id=ORG, chain_id=1, rpc_pool="standard", head_block=100
            )
        first, second, _third = planner.plan_tick(conn, org_id=ORG).planned  # 0-40-80-96
        complete(conn, first.task_id)
        with conn.transaction():
            lease = claim(conn, second.task_id, lease_seconds=30)
        with conn.transaction():
            complete_failure(conn, lease, error="boom", fatal=True, policy=RetryPolicy(0, 0))
            range_outcomes.on_task_dead(conn, lease)
    queue = PgQueue(dbs.state_url, max_receive_count=3, pool_size=1)
    try:
        with connect(dbs.state_url, autocommit=True) as conn:
            woken = outbox.drain(conn, queue)  # the planner's wake-ups, through the outbox
    finally:
        queue.close()
    assert woken >= 1
    token = local_user_token(settings)
    for _ in range(3):
        answer = client.post(
            "/v1/query",
            json={"sql": "SELECT 42 AS x"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert answer.status_code == 200, answer.text

    samples = scrape(client)
    labels = {"org": ORG, "job": "follow", "stream": "blocks"}
    assert sample(samples, "trace_ranges", **labels, state="completed") == 1
    assert sample(samples, "trace_ranges", **labels, state="dead") == 1
    assert sample(samples, "trace_ranges", **labels, state="scheduled") == 1
    assert sample(samples, "trace_chain_head_block", **labels) == 100
    assert sample(samples, "trace_stream_planned_block", **labels) == 96
    assert sample(samples, "trace_stream_lag_blocks", **labels) == 60  # first uncommitted: 40
    (operator,) = {dict(k[1])["operator"] for k in samples if k[0] == "trace_tasks"}
    for status in ("succeeded", "dead", "queued"):
        assert sample(samples, "trace_tasks", operator=operator, status=status) == 1
    assert sample(samples, "trace_task_attempts_total", operator=operator, outcome="fatal") == 1
    assert sample(samples, "trace_task_attempts_total", operator=operator, outcome="succeeded") == 1
    assert sample(samples, "trace_queue_depth", queue=TASK_WAKEUP) == woken
    assert sample(samples, "trace_queue_depth", queue=BUFFER_QUEUE) == 0
    assert sample(samples, "trace_queue_dead", queue=TASK_WAKEUP) == 0
    assert sample(samples, "trace_queue_oldest_age_seconds", queue=TASK_WAKEUP) >= 0
    audited = [r for r in audit_rows(dbs) if r["outcome"] == "ok"]
    assert len(audited) == 3
    count = sample(samples, "trace_query_duration_seconds_count", outcome="ok")
    inf = sample(samples, "trace_query_duration_seconds_bucket", outcome="ok", le="+Inf")
    assert count == inf == 3
    total_ms = sum(r["duration_ms"] for r in audited)
    assert sample(samples, "trace_query_duration_seconds_sum", outcome="ok") == total_ms / 1000
    slowest = max(r["duration_ms"] for r in audited) / 1000
    buckets = [
        (float(dict(k[1])["le"]), v)
        for k, v in samples.items()
        if k[0] == "trace_query_duration_seconds_bucket" and dict(k[1])["le"] != "+Inf"
    ]
    assert all(v == 3 for le, v in buckets if le >= slowest)
    assert sample(samples, "trace_metrics_up") == 1


def test_metrics_read_sqs_queue_stats(
    settings: Settings, dbs: Databases, moto_server_url: str
) -> None:
    """The collector over the SQS driver: depth from queue attributes, oldest age from CloudWatch."""
    prefix = f"metrics-{dbs.state_url.rsplit('/', 1)[1][-8:]}-"
    driver = SqsQueue(
        max_receive_count=3, queue_prefix=prefix, endpoint_url=moto_server_url, region="us-east-1"
    )
    driver.publish(BUFFER_QUEUE, {"batch": "x"})
    # AWS publishes ApproximateAgeOfOldestMessage per queue every minute; moto does not, so
    # publish the datapoint AWS would (for the buffer queue only) into moto's CloudWatch.
    cloudwatch = boto3.client("cloudwatch", endpoint_url=moto_server_url, region_name="us-east-1")
    cloudwatch.put_metric_data(
        Namespace="AWS/SQS",
        MetricData=[
            {
                "MetricName": "ApproximateAgeOfOldestMessage",
                "Dimensions": [{"Name": "QueueName", "Value": f"{prefix}{BUFFER_QUEUE}"}],
                "Timestamp": datetime.now(UTC) - timedelta(minutes=1),
                "Value": 42.0,
                "Unit": "Seconds",
            }
        ],
    )
    state = psycopg_pool(dbs.state_url)
    data = psycopg_pool(dbs.data_url)
    try:
        metrics = {m.name: m for m in TraceCollector(state, data, lambda: driver).collect()}
    finally:
        state.close()
        data.close()
    depth = {s.labels["queue"]: s.value for s in metrics["trace_queue_depth"].samples}
    assert depth == {TASK_WAKEUP: 0, BUFFER_QUEUE: 1}
    oldest = {s.labels["queue"]: s.value for s in metrics["trace_queue_oldest_age_seconds"].samples}
    assert oldest == {BUFFER_QUEUE: 42.0}  # no datapoint for the wake-up queue: no sample
    assert metrics["trace_metrics_up"].samples[0].value == 1


def psycopg_pool(url: str) -> ConnectionPool[Any]:
    return ConnectionPool(url, min_size=1, max_size=1, kwargs={"autocommit": True})


def test_a_failing_source_sets_up_to_zero_and_keeps_the_rest(
    dbs: Databases, moto_server_url: str
) -> None:
    bad = SqsQueue(max_receive_count=3, queue_prefix="no spaces!", endpoint_url=moto_server_url)
    state = psycopg_pool(dbs.state_url)
    data = psycopg_pool(dbs.data_url)
    try:
        metrics = {m.name: m for m in TraceCollector(state, data, lambda: bad).collect()}
    finally:
        state.close()
        data.close()
    assert metrics["trace_metrics_up"].samples[0].value == 0
    assert "trace_queue_depth" not in metrics  # the queue source failed (ConfigError)
    assert "trace_tasks" in metrics and "trace_query_duration_seconds" in metrics
