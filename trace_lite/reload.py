"""After ``trace-lite apply``: make the Dagster UI load the new job's assets.

Stream assets are built from state when Dagster loads the definitions, so a job applied after
the webserver started is unknown to it ("External Asset", Materialize greyed out) until the
code location reloads. When a local stack (``trace-lite up`` or ``demo``) is running, its
webserver's URL is in ``<TRACE_HOME>/stack.json``: ``reload_definitions`` asks it, through
Dagster's GraphQL API (``reloadRepositoryLocation``, what the UI's "Reload definitions" button
sends), to reload every code location. Without a running stack it says how to reload by hand.
The dispatcher sensor's tick message also names applied streams the loaded definitions lack.
"""

from __future__ import annotations

from typing import Any

import httpx

from trace_core.settings import Settings
from trace_lite.stack import STACK_FILE, StackRecord, alive

LOCATIONS = "query { workspaceOrError { ... on Workspace { locationEntries { name } } } }"
RELOAD = """
mutation ($name: String!) {
  reloadRepositoryLocation(repositoryLocationName: $name) {
    __typename
    ... on WorkspaceLocationEntry {
      loadStatus
      locationOrLoadError { __typename ... on PythonError { message } }
    }
    ... on PythonError { message }
    ... on UnauthorizedError { message }
    ... on ReloadNotSupported { message }
  }
}
"""
HINT = (
    "reload the Dagster UI's definitions to see the job's assets: Deployment > Code locations "
    '> "Reload" (a running `trace-lite up` or `demo` is reloaded by apply itself)'
)
TIMEOUT_SECONDS = 120.0  # a reload re-imports the definitions (reads state)


def webserver_url(settings: Settings) -> str | None:
    """The running local stack's Dagster webserver URL, if any."""
    record = StackRecord.load(settings.home / STACK_FILE)
    for service in record.services if record else []:
        if service.name == "dagster" and alive(service.pid):
            return service.url
    return None


def graphql(client: httpx.Client, url: str, query: str, **variables: Any) -> dict[str, Any]:
    response = client.post(f"{url}/graphql", json={"query": query, "variables": variables})
    response.raise_for_status()
    body = response.json()
    if body.get("errors"):
        raise RuntimeError(body["errors"][0].get("message", "GraphQL error"))
    return dict(body["data"])


def reload_locations(url: str, client: httpx.Client | None = None) -> list[str]:
    """Reload every code location of the webserver at ``url``; returns one line per location.

    Raises ``httpx.HTTPError`` (or ``RuntimeError`` for a GraphQL error) when it cannot ask.
    """
    with client or httpx.Client(timeout=TIMEOUT_SECONDS) as client:
        workspace = graphql(client, url, LOCATIONS)["workspaceOrError"]
        names = [e["name"] for e in workspace.get("locationEntries", [])]
        lines = []
        for name in names:
            got = graphql(client, url, RELOAD, name=name)["reloadRepositoryLocation"]
            error = got.get("message") or (got.get("locationOrLoadError") or {}).get("message")
            if got["__typename"] == "WorkspaceLocationEntry" and not error:
                lines.append(f"reloaded Dagster definitions of code location {name} at {url}")
            else:
                lines.append(f"could not reload code location {name} at {url}: {error}; {HINT}")
        return lines


def reload_definitions(settings: Settings) -> list[str]:
    """What ``apply`` prints after applying: the reload it did, or how to reload."""
    url = webserver_url(settings)
    if url is None:
        return [f"no local Dagster webserver running; {HINT}"]
    try:
        return reload_locations(url)
    except (httpx.HTTPError, RuntimeError, KeyError) as exc:
        return [f"could not reach the Dagster webserver at {url} ({exc}); {HINT}"]
