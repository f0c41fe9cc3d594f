"""The HTTP API's own fixed cost per request (issue 22), against baselines in the same run.

Writes the transactions dataset of ``bench_query.py`` (default 200,000 rows, 10 versions),
registers it in an embedded Postgres, creates an API key and serves the Query Service app with
the HTTP API mounted (``create_app(routes=api_routes(...))``) under uvicorn on loopback. Then
times, interleaved round by round (median and minimum, ms):

- raw:       the small query (count over 10 blocks) on one warm DuckDB over the files;
- service:   the same through ``QueryService.query_as`` in process (what the API calls after
             authenticating the key: registry, gate, engine worker, audit);
- api query: ``POST /v1/query`` with the API key over HTTP (key, rate limit, role, body, the
             service, JSON) -> its cost over ``service`` is the API's per-request cost;
- token query: ``POST /v1/query`` with a user token (the Query Service's legacy path);
- healthz:   ``GET /healthz`` (an HTTP round trip plus one ``SELECT 1``; the floor);
- whoami, jobs: ``GET /v1/whoami`` and ``GET /v1/jobs`` (key, rate limit, role, handler:
             jobs reads chain_sync and transform jobs in a tenant-scoped transaction).

Run: .venv/bin/python benchmarks/bench_api.py [--rows N] [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
from _scratch import scratch_databases
from bench_query import QUERIES, Http, publish

from trace_core.api.routes import api_routes
from trace_core.db.connection import connect
from trace_core.query.client import local_user_token
from trace_core.query.service import QueryRequest, QueryService
from trace_core.settings import Settings
from trace_core.storage.local import LocalStore
from trace_core.tenancy import authenticate_key, create_key

SETTLE_SECONDS = 0.05
# variant -> the baseline its "added" column is measured against
BASELINE = {
    "service": "raw",
    "api query": "service",
    "token query": "service",
    "whoami": "healthz",
    "jobs": "healthz",
}


def rounds(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, list[float]]:
    """Samples (ms) per variant: one warm-up round, then ``repeat`` interleaved rounds whose
    order rotates, with a short untimed pause after each call (the service's background
    work after a query is not billed to the next variant)."""
    for fn in fns.values():
        fn()
    names = list(fns)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for i in range(repeat):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            started = time.perf_counter()
            fns[name]()
            samples[name].append((time.perf_counter() - started) * 1000)
            time.sleep(SETTLE_SECONDS)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=21)
    args = parser.parse_args()
    load_before = os.getloadavg()

    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp_dir:
        tmp = Path(tmp_dir)
        home = tmp / "home"
        home.mkdir()
        dbs = scratch_databases(home, "bench_api")
        settings = Settings(
            home=home,
            state_url=dbs.state_url,  # type: ignore[arg-type]
            data_url=dbs.data_url,  # type: ignore[arg-type]
            api_rate_limit="100000/second",  # the benchmark is not the limiter's subject
        )
        store = LocalStore(home / "objects")
        files = publish(settings, store, tmp, args.rows)
        with connect(dbs.state_url, autocommit=True) as conn:
            _, secret = create_key(conn, settings.org_id, "viewer", name="bench")
            principal = authenticate_key(conn, secret)
        sql = QUERIES["small"]
        raw = duckdb.connect(":memory:", config={"threads": settings.query_threads})
        source = "read_parquet([" + ", ".join(f"'{f}'" for f in files) + "])"
        service = QueryService(settings, dbs, store, hot_sources=None)
        service.open()
        http = Http(settings, dbs, store, routes=api_routes(settings))
        key = {"Authorization": f"Bearer {secret}"}
        token = {"Authorization": f"Bearer {local_user_token(settings)}"}
        request = QueryRequest(sql=sql)

        def post(headers: dict[str, str]) -> Callable[[], object]:
            return lambda: http.client.post(
                "/v1/query", json={"sql": sql}, headers=headers
            ).raise_for_status()

        def get(path: str, headers: dict[str, str] | None = None) -> Callable[[], object]:
            return lambda: http.client.get(path, headers=headers or {}).raise_for_status()

        variants: dict[str, Callable[[], object]] = {
            "raw": lambda: raw.execute(sql.replace("transactions", source)).fetchall(),
            "service": lambda: service.query_as(principal, request),
            "api query": post(key),
            "token query": post(token),
            "healthz": get("/healthz"),
            "whoami": get("/v1/whoami", key),
            "jobs": get("/v1/jobs", key),
        }
        answer = http.client.post("/v1/query", json={"sql": sql}, headers=key).json()
        expected = raw.execute(sql.replace("transactions", source)).fetchall()
        assert answer["rows"] == [list(r) for r in expected], answer
        try:
            samples = rounds(variants, args.repeat)
        finally:
            http.close()
            service.close()
            raw.close()

    print(f"rows={args.rows:,} repeat={args.repeat} query={json.dumps(sql)}")
    header = (
        f"{'variant':<12} {'median':>8} {'min':>8}  {'baseline':<9} {'added med':>9}"
        f" {'added min':>9} {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    med = {name: statistics.median(v) for name, v in samples.items()}
    low = {name: min(v) for name, v in samples.items()}
    for name in variants:
        base = BASELINE.get(name)
        cells = f"{name:<12} {med[name]:>8.2f} {low[name]:>8.2f}"
        if base:
            cells += (
                f"  {base:<9} {med[name] - med[base]:>+9.2f} {low[name] - low[base]:>+9.2f}"
                f" {med[name] / med[base]:>5.2f}x"
            )
        print(cells)
    print(f"cpu count={os.cpu_count()} loadavg before={load_before} after={os.getloadavg()}")


if __name__ == "__main__":
    main()
