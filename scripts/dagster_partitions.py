"""Ready a Dagster webserver for a screenshot of an asset's partitions (for screenshot_ui.sh).

Usage: dagster_partitions.py DAGSTER_URL ASSET/KEY/PATH [--timeout SECONDS]

Polls the webserver's GraphQL until every partition of the asset is materialized, marks the
community sign-up dialog as seen (``setNuxSeen``, stored under this server's DAGSTER_HOME) so
it does not cover the page, and prints the asset's last partition key on stdout. Exits 1 if
the deadline passes first.
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="Dagster webserver base URL")
    parser.add_argument("asset_key", help="asset key path, e.g. chain_sync/demo/blocks")
    parser.add_argument("--timeout", type=float, default=120.0)
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
    print(f"{args.asset_key}: all {len(keys)} partitions materialized", file=sys.stderr)
    print(sorted(keys)[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
