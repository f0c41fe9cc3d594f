"""A chain_sync job as cryo's own command lines: the tool runs the same extraction without Trace.

One ``cryo`` command per stream over the job's whole range, its options spelled as cryo's CLI
flags (``include_columns`` -> ``--include-columns``). The RPC URL is never written: each line
reads the pool's ``TRACE_RPC_POOL_<POOL>_URL`` from the shell.
"""

from __future__ import annotations

import shlex

from trace_core.chain_sync.spec import ChainSyncSpec, FixedTarget
from trace_core.settings import rpc_pool_env_var


def cryo_block_range(spec: ChainSyncSpec) -> str:
    """cryo's ``--blocks`` value: ``start:end`` (end-exclusive, as Trace's) or ``start:latest``."""
    mode = spec.mode
    end = str(mode.to_block) if isinstance(mode, FixedTarget) else "latest"
    return f"{mode.from_block}:{end}"


def cryo_command(spec: ChainSyncSpec, dataset_key: str, output_dir: str = "data") -> list[str]:
    """The argv of cryo's CLI for one stream (the RPC URL left as a shell variable reference)."""
    s = spec.streams[dataset_key]
    argv = [
        "cryo",
        s.cryo_dataset_name,
        "--blocks",
        cryo_block_range(spec),
        "--chunk-size",
        str(s.chunk_size),
        "--output-dir",
        f"{output_dir}/{dataset_key}",
    ]
    for name, value in s.cryo_options.as_kwargs().items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            if value:
                argv.append(flag)
        elif isinstance(value, list):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


def cryo_args_text(spec: ChainSyncSpec, output_dir: str = "data") -> str:
    """A shell file of cryo commands, one per stream (``sh cryo.args`` with the pool URLs set)."""
    lines = [
        f"# cryo commands for chain_sync job {spec.name} (chain {spec.chain_id}).",
        "# Written by `dg scaffold defs trace_dagster.ChainSyncComponent`; Trace does not read",
        "# this file. Run it with cryo's CLI to extract the same data without Trace.",
    ]
    for key, s in spec.streams.items():
        var = rpc_pool_env_var(s.rpc_pool)
        lines.append(f'{shlex.join(cryo_command(spec, key, output_dir))} --rpc "${{{var}}}"')
    return "\n".join(lines) + "\n"
