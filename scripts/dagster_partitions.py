"""Ready a Dagster webserver for a screenshot of an asset's partitions (for screenshot_ui.sh).

Usage: dagster_partitions.py DAGSTER_URL ASSET/KEY/PATH [--timeout SECONDS] [--check]

Polls the webserver's GraphQL until every partition of the asset is materialized, marks the
community sign-up dialog as seen (``setNuxSeen``, stored under this server's DAGSTER_HOME) so
it does not cover the page, and prints the asset's last partition key on stdout. Exits 1 if
the deadline passes first.

With ``--check`` it also waits for, and then asserts, what the UI must show beside the
partitions (the same GraphQL the pages load): no failed partition; the asset's ``integrity``
check evaluated with every evaluated partition passed (its Partitions tab); the
``trace_dispatcher`` sensor's latest tick message naming what it did and the job's progress
(not "0 runs requested"); and both ``trace/sensors`` health checks passing.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import httpx

STATS_QUERY = """
query PartitionStats($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    __typename
    ... on AssetNode {
      partitionStats { numMaterialized numPartitions numFailed }
      partitionKeysByDimension { partitionKeys }
    }
  }
}
"""
NUX_SEEN_MUTATION = "mutation SetNuxSeen { setNuxSeen }"
CHECK_QUERY = """
query Checks($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    ... on AssetNode {
      partitionStats { numFailed }
      assetChecksOrError {
        ... on AssetChecks {
          checks {
            name
            partitionStatuses {
              ... on AssetCheckDefaultPartitionStatuses { succeededPartitions failedPartitions }
            }
          }
        }
      }
    }
  }
  repositoriesOrError {
    ... on RepositoryConnection {
      nodes { sensors { name sensorState { ticks(limit: 1) { status skipReason } } } }
    }
  }
  dispatcher: assetCheckExecutions(
    assetKey: {path: ["trace", "sensors"]}, checkName: "trace_dispatcher_healthy", limit: 1
  ) { status }
  worker: assetCheckExecutions(
    assetKey: {path: ["trace", "sensors"]}, checkName: "trace_worker_wakeups_healthy", limit: 1
  ) { status }
}
"""


def graphql(client: httpx.Client, url: str, query: str, **variables: Any) -> dict[str, Any]:
    """POST one GraphQL operation; HTTP errors raise, GraphQL errors exit with a message."""
    resp = client.post(f"{url}/graphql", json={"query": query, "variables": variables})
    resp.raise_for_status()
    body: dict[str, Any] = resp.json()
    if body.get("errors"):
        raise SystemExit(f"{url}/graphql: {body['errors']}")
    data: dict[str, Any] = body["data"]
    return data


def materialized_keys(client: httpx.Client, url: str, key: list[str]) -> list[str] | None:
    """The asset's partition keys once all are materialized, else None."""
    node = graphql(client, url, STATS_QUERY, key={"path": key})["assetNodeOrError"]
    if node["__typename"] != "AssetNode" or not node["partitionStats"]:
        return None
    stats = node["partitionStats"]
    if not 0 < stats["numPartitions"] == stats["numMaterialized"]:
        return None
    keys: list[str] = node["partitionKeysByDimension"][0]["partitionKeys"]
    return keys


def ui_problems(client: httpx.Client, url: str, key: list[str]) -> list[str]:
    """What the UI would show wrong beside the partitions (empty: all as expected)."""
    data = graphql(client, url, CHECK_QUERY, key={"path": key})
    node = data["assetNodeOrError"]
    problems = []
    if node["partitionStats"]["numFailed"]:
        problems.append(f"{node['partitionStats']['numFailed']} failed partition(s)")
    checks = {c["name"]: c for c in node["assetChecksOrError"].get("checks", [])}
    tab = (checks.get("integrity") or {}).get("partitionStatuses") or {}
    if not tab.get("succeededPartitions"):
        problems.append("the integrity check's Partitions tab shows no passed partition yet")
    if tab.get("failedPartitions"):
        problems.append(f"integrity failed on {sorted(tab['failedPartitions'])}")
    sensors = {
        s["name"]: s for repo in data["repositoriesOrError"]["nodes"] for s in repo["sensors"]
    }
    ticks = sensors["trace_dispatcher"]["sensorState"]["ticks"]
    message = (ticks[0].get("skipReason") or "") if ticks else ""
    if f"{key[1]}: " not in message:
        problems.append(
            f"the dispatcher's last tick shows no progress of job {key[1]}: {message!r}"
        )
    for name in ("dispatcher", "worker"):
        latest = data[name]
        if not latest or latest[0]["status"] != "SUCCEEDED":
            problems.append(f"the trace/sensors {name} health check has not passed: {latest}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="Dagster webserver base URL")
    parser.add_argument("asset_key", help="asset key path, e.g. chain_sync/demo/blocks")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--check", action="store_true", help="also check what the UI shows")
    args = parser.parse_args()
    url = args.url.rstrip("/")
    key = args.asset_key.split("/")
    deadline = time.monotonic() + args.timeout
    with httpx.Client(timeout=10.0) as client:
        while (keys := materialized_keys(client, url, key)) is None:
            if time.monotonic() > deadline:
                print(f"{args.asset_key}: partitions not all materialized in time", file=sys.stderr)
                return 1
            time.sleep(1.0)
        graphql(client, url, NUX_SEEN_MUTATION)
        while args.check and (problems := ui_problems(client, url, key)):
            if time.monotonic() > deadline:
                print("the UI is not as expected:\n  " + "\n  ".join(problems), file=sys.stderr)
                return 1
            time.sleep(2.0)
    print(f"{args.asset_key}: all {len(keys)} partitions materialized", file=sys.stderr)
    if args.check:
        print(
            "checked: no failed partition, integrity passes, dispatcher progress, sensors healthy",
            file=sys.stderr,
        )
    print(sorted(keys)[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
