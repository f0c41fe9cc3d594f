"""Datasets: deterministic ids, manifests, the commit protocol, the registry and staging GC.

The names below load their module on first use (PEP 562): importing ``trace_core.datasets.ids``
(every task payload does) must not import pyarrow through ``commit``."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trace_core.datasets.commit import (
        CommittedVersion,
        StagedFile,
        StagedOutput,
        commit_dataset_version,
        describe_parquet,
        register_version,
        stage_parquet_files,
    )
    from trace_core.datasets.manifest import Column, DatasetManifest, load_manifest, parse_manifest
    from trace_core.datasets.registry import (
        VersionRecord,
        get_version,
        latest_versions,
        versions_for_stream,
    )

_WHERE = {
    "CommittedVersion": "commit",
    "StagedFile": "commit",
    "StagedOutput": "commit",
    "commit_dataset_version": "commit",
    "describe_parquet": "commit",
    "register_version": "commit",
    "stage_parquet_files": "commit",
    "Column": "manifest",
    "DatasetManifest": "manifest",
    "load_manifest": "manifest",
    "parse_manifest": "manifest",
    "VersionRecord": "registry",
    "get_version": "registry",
    "latest_versions": "registry",
    "versions_for_stream": "registry",
}

__all__ = [
    "Column",
    "CommittedVersion",
    "DatasetManifest",
    "StagedFile",
    "StagedOutput",
    "VersionRecord",
    "commit_dataset_version",
    "describe_parquet",
    "get_version",
    "latest_versions",
    "load_manifest",
    "parse_manifest",
    "register_version",
    "stage_parquet_files",
    "versions_for_stream",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
