"""Analytics outputs become committed dataset versions (the datasets commit protocol).

A DuckDB query result is written as one Parquet file, staged, moved under the version prefix
with its manifest written last, and registered in one state transaction together with its
``dataset_version_committed`` event, exactly like a compacted hot range (no task: analytics
runs are not Trace tasks; the event names the job, whose alerts read it). Each job has its own
datasets (``analytics_<name>__<job tag>``: two jobs on one chain never share an output). The
version id is a
function of ``(dataset, config_hash, chain, range)`` and ``config_hash`` carries a
fingerprint of the inputs read, so re-materializing the same inputs registers nothing new,
while new inputs give a new version that readers prefer (newest per block).
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
from psycopg import Connection

from trace_core.chain_sync.analytics_spec import OUTPUT_PREFIX, job_dataset_key
from trace_core.datasets import ids
from trace_core.datasets.commit import (
    CommittedVersion,
    StagedOutput,
    commit_version,
    stage_parquet_files,
)
from trace_core.datasets.duckdb_sql import sql_literal
from trace_core.datasets.registry import get_version
from trace_core.errors import AnalyticsFailed
from trace_core.storage.base import ObjectStore

log = logging.getLogger(__name__)

CONFIG_VERSION = "v1"
DATASET_PREFIX = OUTPUT_PREFIX


def output_key(name: str) -> str:
    """Query relation name of an analytics output: ``analytics_{name}``."""
    return f"{DATASET_PREFIX}{name}"


def dataset_key(job: str, name: str) -> str:
    """Dataset key of output ``name`` of ``job`` (``analytics_{name}__{job tag}``)."""
    return job_dataset_key(job, output_key(name))


def output_config_hash(name: str, fingerprint: str) -> str:
    """``analytics.{name}:v1:{fingerprint}``: which computation over which inputs."""
    return f"analytics.{name}:{CONFIG_VERSION}:{fingerprint}"


def fingerprint(*parts: object) -> str:
    """16 hex of sha256 over the parts' text: a stable id of inputs and parameters."""
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class OutputTarget:
    """Where one output goes: ``job``'s dataset of output ``name`` on ``chain_id``, range
    ``[start, end)``."""

    org_id: str
    job: str
    chain_id: int
    name: str
    start: int
    end: int
    fingerprint: str
    fake: bool = False  # derived from fake inputs: marked fake too

    @property
    def dataset_key(self) -> str:
        return dataset_key(self.job, self.name)

    @property
    def config_hash(self) -> str:
        return output_config_hash(self.name, self.fingerprint)

    @property
    def dataset_uuid(self) -> uuid.UUID:
        return ids.dataset_uuid(self.org_id, self.chain_id, self.dataset_key)

    @property
    def dataset_version(self) -> uuid.UUID:
        return ids.dataset_version(
            self.dataset_uuid, self.config_hash, self.chain_id, self.start, self.end, fake=self.fake
        )

    def file_name(self) -> str:
        return (
            f"network_{self.chain_id}__{self.dataset_key}__"
            f"{self.start:08}_to_{self.end - 1:08}.parquet"
        )


def registered(state: Connection[Any], target: OutputTarget) -> CommittedVersion | None:
    """The target's version if already registered (same inputs, same computation)."""
    rec = get_version(state, target.dataset_version)
    return CommittedVersion(rec, newly_registered=False) if rec is not None else None


def commit_query(
    state: Connection[Any],
    store: ObjectStore,
    con: duckdb.DuckDBPyConnection,
    target: OutputTarget,
    select_sql: str,
    params: Mapping[str, Any] | None = None,
) -> CommittedVersion:
    """Write ``select_sql``'s result as the target's version and commit it (idempotent).

    Raises ``AnalyticsFailed`` when DuckDB cannot compute it (overflow, bad cast), naming the
    output; ``DatasetConflict``/``StorageError`` from the commit.
    """
    existing = registered(state, target)
    if existing is not None:
        return existing
    staging_task = uuid.uuid4()  # staging is throwaway; the version id is deterministic
    with tempfile.TemporaryDirectory(prefix="analytics_") as tmp:
        path = Path(tmp) / target.file_name()
        copy = (
            f"COPY ({select_sql}) TO {sql_literal(str(path))} "
            "(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 1000000)"
        )
        try:
            con.execute(copy, dict(params or {}))
        except duckdb.Error as exc:
            raise AnalyticsFailed(
                f"analytics output {target.dataset_key} [{target.start}, {target.end}) "
                f"failed: {exc}",
                dataset=target.dataset_key,
            ) from exc
        schema, files = stage_parquet_files(store, staging_task, 1, [path])
    staged = StagedOutput(
        task_id=staging_task,
        attempt=1,
        org_id=target.org_id,
        dataset_uuid=target.dataset_uuid,
        dataset_key=target.dataset_key,
        chain_id=target.chain_id,
        range_start=target.start,
        range_end=target.end,
        config_hash=target.config_hash,
        schema=schema,
        files=files,
        fake=target.fake,
    )
    # no task: lock, publish, register, announce (once per version, naming the job whose
    # alerts read it)
    committed = commit_version(state, store, staged, announce=True, job_name=target.job)
    log.info(
        "analytics output committed",
        extra={
            "dataset": target.dataset_key,
            "range": f"{target.start}:{target.end}",
            "rows": committed.record.row_count,
            "dataset_version": str(committed.record.dataset_version),
            "new": committed.newly_registered,
        },
    )
    return committed
