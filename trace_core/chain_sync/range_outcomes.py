"""A planned range when its task ends: completed with its version (freeing its inflight
slot), dead (its stream stops planning), or revived. The worker's hooks for ``cryo_ingest``
(``on_task_succeeded``/``on_task_dead``) run in the transaction that ends the task.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from psycopg import Connection
from psycopg.rows import dict_row

from trace_core.db.errors import translates_db_errors
from trace_core.db.queries import q
from trace_core.errors import DatasetConflict, InvalidPayload, UnknownTask
from trace_core.tasks.lifecycle import Lease

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScheduledRange:
    job_id: uuid.UUID
    org_id: uuid.UUID
    job_name: str
    chain_id: int
    dataset_key: str
    range_start: int
    range_end: int
    task_id: uuid.UUID
    status: str
    dataset_version: uuid.UUID | None
    dataset_uuid: uuid.UUID
    config_hash: str


@translates_db_errors("chain_sync range_for_task")
def range_for_task(conn: Connection[Any], task_id: uuid.UUID) -> ScheduledRange | None:
    """The planned range a task belongs to, or None for a task chain_sync did not plan."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(q("chain_sync", "range_for_task"), {"task_id": task_id}).fetchone()
    return ScheduledRange(**row) if row else None


@translates_db_errors("chain_sync mark_range_completed")
def mark_range_completed(
    conn: Connection[Any], task_id: uuid.UUID, dataset_version: uuid.UUID
) -> bool:
    """Record that the task's range committed ``dataset_version``; frees its inflight slot.

    Call inside the transaction that completes the task (after fencing). Returns False if the
    range was already completed with this version (a replay). Raises ``UnknownTask`` if no range
    has this task, ``DatasetConflict`` if it completed earlier with another version.
    """
    dataset_version = uuid.UUID(str(dataset_version))
    row = conn.execute(
        q("chain_sync", "complete_range"), {"task_id": task_id, "dataset_version": dataset_version}
    ).fetchone()
    if row is not None:
        return True
    state = conn.execute(q("chain_sync", "range_state"), {"task_id": task_id}).fetchone()
    if state is None:
        raise UnknownTask(task_id)
    if state[1] != dataset_version:
        raise DatasetConflict(
            f"range of task {task_id} already completed with dataset version {state[1]}, not {dataset_version}",
            task_id=str(task_id),
        )
    return False


@translates_db_errors("chain_sync mark_range_dead")
def mark_range_dead(conn: Connection[Any], task_id: uuid.UUID) -> bool:
    """Record that the task's range ended dead (its stream stops planning; status shows it).

    Call inside the transaction that ends the task dead. Returns False if it was not
    ``scheduled``. Raises ``UnknownTask`` if no range has this task.
    """
    if conn.execute(q("chain_sync", "kill_range"), {"task_id": task_id}).fetchone() is not None:
        log.warning("chain_sync range dead", extra={"task_id": str(task_id)})
        return True
    if conn.execute(q("chain_sync", "range_state"), {"task_id": task_id}).fetchone() is None:
        raise UnknownTask(task_id)
    return False


@translates_db_errors("chain_sync revive_range")
def revive_range(conn: Connection[Any], task_id: uuid.UUID) -> bool:
    """Put a dead range back to ``scheduled`` (call in the transaction that requeues its task).

    Returns False if it was not dead. Raises ``UnknownTask`` if no range has this task.
    """
    if conn.execute(q("chain_sync", "revive_range"), {"task_id": task_id}).fetchone() is not None:
        return True
    if conn.execute(q("chain_sync", "range_state"), {"task_id": task_id}).fetchone() is None:
        raise UnknownTask(task_id)
    return False


@translates_db_errors("chain_sync on_task_succeeded")
def on_task_succeeded(conn: Connection[Any], lease: Lease, outputs: dict[str, Any]) -> None:
    """Worker success hook for ``cryo_ingest``: complete the range, if chain_sync planned it.

    ``outputs`` must carry the committed ``dataset_version``.
    """
    version = outputs.get("dataset_version")
    if version is None:
        if range_for_task(conn, lease.task_id) is None:
            return
        raise InvalidPayload(
            f"task {lease.task_id} succeeded without a dataset_version", task_id=str(lease.task_id)
        )
    # one round trip when the range is ours and open (the common case): no lookup first
    with contextlib.suppress(UnknownTask):  # a task chain_sync did not plan
        mark_range_completed(conn, lease.task_id, uuid.UUID(str(version)))


@translates_db_errors("chain_sync on_task_dead")
def on_task_dead(conn: Connection[Any], lease: Lease) -> None:
    """Worker dead hook for ``cryo_ingest``: mark the range dead, if chain_sync planned it."""
    if range_for_task(conn, lease.task_id) is not None:
        mark_range_dead(conn, lease.task_id)
