"""Task inputs (``state.task_inputs``): the dataset versions a task reads, with their storage
prefixes, so what an attempt may read (query grants, scoped storage credentials) can be
derived from state rather than from its payload alone. A row takes its task's org."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from psycopg import Connection
from psycopg.rows import dict_row

from trace_core.db.errors import db_errors
from trace_core.db.queries import q


@dataclass(frozen=True)
class TaskInput:
    org_id: uuid.UUID
    task_id: uuid.UUID
    dataset_version: uuid.UUID
    dataset_uuid: uuid.UUID
    storage_prefix: str


def record_task_inputs(
    conn: Connection[Any], task_id: uuid.UUID, versions: Iterable[uuid.UUID]
) -> int:
    """Record ``versions`` as inputs of ``task_id`` (idempotent); how many rows were new.
    Versions unknown to the registry (or, in a tenant scope, of another org) are skipped."""
    params = {"task_id": task_id, "versions": [str(v) for v in versions]}
    with db_errors("record task inputs"):
        return conn.execute(q("tenancy", "insert_task_inputs"), params).rowcount


def task_inputs(conn: Connection[Any], task_id: uuid.UUID) -> list[TaskInput]:
    """The task's recorded inputs, by version id."""
    with db_errors("task inputs"), conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(q("tenancy", "task_inputs"), {"task_id": task_id}).fetchall()
    return [TaskInput(**row) for row in rows]
