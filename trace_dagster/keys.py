"""Asset keys and partition-set names of the stream assets (one place: the partitions, the
epochs sync, the worker's reports and the integrity checks all name them)."""

# No `from __future__ import annotations` here: Dagster resolves annotations at runtime.
import re

from dagster import AssetKey

_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


def partitions_def_name(job_name: str, dataset_key: str, prefix: str | None = None) -> str:
    """The stream's epoch partitions. The ``__epochs`` suffix leaves the fine-range partitions
    of a Trace before epochs (``job__stream``) behind untouched: deleting 100k keys one by one
    costs minutes in Dagster's storage; the partition sync materializes the epochs instead.
    ``prefix``: the org's (``engine.orgs.key_prefix``; None for the deployment's org)."""
    name = f"{job_name}__{dataset_key}__epochs"
    return _UNSAFE.sub("_", f"{prefix}__{name}" if prefix else name)


def stream_asset_key(job_name: str, dataset_key: str, prefix: str | None = None) -> AssetKey:
    """``chain_sync/<job>/<stream>``; another org's under its prefix (jobs of different orgs
    may share a name): ``org_<name>/chain_sync/<job>/<stream>``."""
    path = ["chain_sync", _UNSAFE.sub("_", job_name), dataset_key]
    return AssetKey([prefix, *path] if prefix else path)
