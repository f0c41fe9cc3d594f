"""Dataset events: what a commit announces on the outbox topic ``dataset_events``.

A committed version is announced as a ``dataset_version_committed`` event, in the commit's own
transaction, with an outbox id derived from the version (a replay adds nothing). The event
names the chain_sync job when the committing task belongs to one; a version committed outside a
job (the hot compactor's) carries no job, and its consumers (alert routing) find the jobs that
read it. Other producers (the block follower's ``hot_range_committed``) share the topic.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from psycopg import Connection

from trace_core import outbox

DATASET_EVENTS = "dataset_events"
VERSION_COMMITTED = "dataset_version_committed"


def version_committed_event(
    version: Mapping[str, Any], *, job_name: str | None = None
) -> dict[str, Any]:
    """The ``dataset_version_committed`` event of a committed version (its registry fields:
    ``dataset_key``, ``chain_id``, ``dataset_uuid``, ``dataset_version``, ``manifest_key``,
    ``range_start``, ``range_end``); ``job_name`` only when a chain_sync job committed it."""
    event: dict[str, Any] = {"event": VERSION_COMMITTED}
    if job_name is not None:
        event["job_name"] = str(job_name)
    event.update(
        {
            "dataset_key": str(version["dataset_key"]),
            "chain_id": int(version["chain_id"]),
            "dataset_uuid": str(version["dataset_uuid"]),
            "dataset_version": str(version["dataset_version"]),
            "manifest_key": str(version["manifest_key"]),
            "range_start": int(version["range_start"]),
            "range_end": int(version["range_end"]),
        }
    )
    return event


def announce_version_committed(
    conn: Connection[Any], version: Mapping[str, Any], *, job_name: str | None = None
) -> dict[str, Any]:
    """Enqueue the version's event in the caller's transaction (once per version); returns it."""
    event = version_committed_event(version, job_name=job_name)
    outbox.enqueue(
        conn,
        topic=DATASET_EVENTS,
        payload=event,
        dedupe_name=f"{VERSION_COMMITTED}:{event['dataset_version']}",
    )
    return event
