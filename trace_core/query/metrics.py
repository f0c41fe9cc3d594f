"""Prometheus metrics on the Query Service: ``GET /metrics`` in the text exposition format.

Every value is read at scrape time from the shared state (Postgres, the queue driver), so any
Query Service replica reports the same numbers and nothing is lost when a process restarts:
ranges by state per stream, lag to the chain head, tasks and attempt outcomes, open worker runs,
queue depth / in-flight / dead / oldest message age, and query latency from the query audit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psycopg
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from psycopg_pool import ConnectionPool, PoolTimeout
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from trace_core.db.queries import q
from trace_core.errors import TraceError
from trace_core.queue.base import BUFFER_QUEUE, TASK_WAKEUP, QueueDriver
from trace_core.settings import Settings

log = logging.getLogger(__name__)

QUEUES = (TASK_WAKEUP, BUFFER_QUEUE)
# Query latency buckets (seconds), from a point lookup to a heavy scan.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
QueueFactory = Callable[[], QueueDriver]


class TraceCollector(Collector):
    """Collects from the state and data pools (autocommit) and a queue driver per scrape."""

    def __init__(
        self, state: ConnectionPool[Any], data: ConnectionPool[Any], queues: QueueFactory
    ) -> None:
        self.state = state
        self.data = data
        self.queues = queues

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("trace_metrics_up", "1 if every source answered this scrape")
        ok = True
        for source in (self._state_metrics, self._query_metrics, self._queue_metrics):
            try:
                yield from source()
            except (TraceError, psycopg.Error, PoolTimeout) as exc:
                ok = False
                log.warning("metrics source %s failed: %s", source.__name__, type(exc).__name__)
        up.add_metric([], 1.0 if ok else 0.0)
        yield up

    def _rows(self, pool: ConnectionPool[Any], name: str, **params: Any) -> list[tuple[Any, ...]]:
        with pool.connection() as conn:
            return conn.execute(q("metrics", name), params).fetchall()

    def _state_metrics(self) -> Iterator[Metric]:
        ranges = GaugeMetricFamily(
            "trace_ranges",
            "Planned block ranges by state",
            labels=["org", "job", "stream", "state"],
        )
        for org, job, stream, status, count in self._rows(self.state, "ranges_by_state"):
            ranges.add_metric([org, job, stream, status], count)
        yield ranges

        head = GaugeMetricFamily(
            "trace_chain_head_block",
            "Newest observed head of the stream's chain and RPC pool",
            labels=["org", "job", "stream"],
        )
        lag = GaugeMetricFamily(
            "trace_stream_lag_blocks",
            "Blocks between the chain head and the first block not yet committed",
            labels=["org", "job", "stream"],
        )
        planned = GaugeMetricFamily(
            "trace_stream_planned_block",
            "The planning cursor (exclusive)",
            labels=["org", "job", "stream"],
        )
        for org, job, stream, head_block, next_block, low_water in self._rows(
            self.state, "stream_lag"
        ):
            planned.add_metric([org, job, stream], next_block)
            if head_block is not None:
                head.add_metric([org, job, stream], head_block)
                lag.add_metric([org, job, stream], max(0, head_block - low_water))
        yield from (head, lag, planned)

        tasks = GaugeMetricFamily("trace_tasks", "Tasks by status", labels=["operator", "status"])
        for operator, status, count in self._rows(self.state, "tasks_by_status"):
            tasks.add_metric([operator, status], count)
        yield tasks

        attempts = CounterMetricFamily(
            "trace_task_attempts",
            "Task attempts by outcome (running: not finished; retryable/fatal/expired: failures)",
            labels=["operator", "outcome"],
        )
        for operator, outcome, count in self._rows(self.state, "attempts_by_outcome"):
            attempts.add_metric([operator, outcome], count)
        yield attempts

        ((open_runs, settled_runs),) = self._rows(self.state, "worker_runs")
        runs = GaugeMetricFamily(
            "trace_worker_runs",
            "Worker runs requested by the sensors (settled ones are pruned)",
            labels=["state"],
        )
        runs.add_metric(["open"], open_runs)
        runs.add_metric(["settled"], settled_runs)
        yield runs

    def _query_metrics(self) -> Iterator[Metric]:
        bounds_ms = [int(b * 1000) for b in LATENCY_BUCKETS]
        cumulative: dict[str, dict[int, int]] = {}
        for outcome, le_ms, count in self._rows(self.data, "query_latency", bounds_ms=bounds_ms):
            cumulative.setdefault(outcome, {})[le_ms] = count
        latency = HistogramMetricFamily(
            "trace_query_duration_seconds",
            "Query Service query latency (every audited query, all replicas)",
            labels=["outcome"],
        )
        for outcome, total, duration_ms in self._rows(self.data, "query_totals"):
            counts = cumulative.get(outcome, {})
            buckets = [
                (_le(b), float(counts.get(ms, 0)))
                for b, ms in zip(LATENCY_BUCKETS, bounds_ms, strict=True)
            ]
            buckets.append(("+Inf", float(total)))
            latency.add_metric([outcome], buckets, sum_value=duration_ms / 1000.0)
        yield latency

    def _queue_metrics(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "trace_queue_depth", "Messages visible or delayed", labels=["queue"]
        )
        in_flight = GaugeMetricFamily(
            "trace_queue_in_flight", "Messages received and not yet acked", labels=["queue"]
        )
        dead = GaugeMetricFamily(
            "trace_queue_dead", "Messages in the dead-letter store", labels=["queue"]
        )
        oldest = GaugeMetricFamily(
            "trace_queue_oldest_age_seconds",
            "Age of the oldest waiting message (absent when the driver cannot tell)",
            labels=["queue"],
        )
        driver = self.queues()
        try:
            for queue in QUEUES:
                stats = driver.stats(queue)
                depth.add_metric([queue], stats.depth)
                in_flight.add_metric([queue], stats.in_flight)
                dead.add_metric([queue], stats.dead)
                if stats.oldest_age_seconds is not None:
                    oldest.add_metric([queue], stats.oldest_age_seconds)
        finally:
            driver.close()
        yield from (depth, in_flight, dead, oldest)


def _le(bound: float) -> str:
    return repr(float(bound))


def metrics_registry(
    state: ConnectionPool[Any], data: ConnectionPool[Any], queues: QueueFactory
) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TraceCollector(state, data, queues))
    return registry


def metrics_route(service: Any, settings: Settings | None = None) -> Route:
    """``GET /metrics`` for a ``QueryService`` (its pools; a queue driver per scrape)."""
    from trace_core.queue.factory import make_queue_driver

    config = settings or service.settings

    def queues() -> QueueDriver:
        return make_queue_driver(config, service.state.conninfo, pool_size=1)

    registry = metrics_registry(service.state, service.data, queues)

    async def endpoint(request: Request) -> Response:
        body = await run_in_threadpool(generate_latest, registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return Route("/metrics", endpoint, methods=["GET"])


__all__: Sequence[str] = ("TraceCollector", "metrics_registry", "metrics_route")
