"""Datasets: deterministic ids, manifests, the commit protocol, the registry and staging GC."""

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
