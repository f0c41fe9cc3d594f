"""chain_sync job files: read, parse (``trace_core.yamlfile``) and validate (``spec``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from trace_core.chain_sync.spec import ChainSyncSpec, validate_job
from trace_core.yamlfile import (  # re-exported for job-file callers
    MAX_YAML_BYTES,
    LoadedYaml,
    YamlPath,
    dotted_path,
    load_yaml,
    read_capped,
)

__all__ = [
    "MAX_YAML_BYTES",
    "LoadedJob",
    "LoadedYaml",
    "YamlPath",
    "dotted_path",
    "load_job_file",
    "load_yaml",
    "parse_job",
    "read_capped",
]


class LoadedJob(NamedTuple):
    """A validated job and the exact bytes it came from (hashed by ``apply`` to detect edits)."""

    spec: ChainSyncSpec
    raw: bytes


def parse_job(
    raw: str | bytes,
    *,
    source: str = "<string>",
    require_pools: bool = False,
    environ: Mapping[str, str] | None = None,
) -> LoadedJob:
    """Parse and validate a chain_sync job document. Raises ``ConfigError``/``InvalidJobFile``."""
    data = raw.encode() if isinstance(raw, str) else bytes(raw)
    doc = load_yaml(data, source=source)
    return LoadedJob(validate_job(doc, require_pools=require_pools, environ=environ), data)


def load_job_file(
    path: str | Path, *, require_pools: bool = False, environ: Mapping[str, str] | None = None
) -> LoadedJob:
    """Read, parse and validate a chain_sync job file (``spec, raw = load_job_file(p)``).

    ``require_pools`` (``apply --strict``) also requires each pool's RPC URL variable to be set.
    """
    p = Path(path)
    return parse_job(read_capped(p), source=str(p), require_pools=require_pools, environ=environ)
