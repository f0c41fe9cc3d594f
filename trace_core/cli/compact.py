"""``trace-lite compact``: rewrite each stream's committed ranges as one version per epoch."""

from __future__ import annotations

import click

from trace_core.cli.common import console, handle_errors, runtime


@click.command()
@click.option("--job", default=None, help="Job name or id (default: every job)")
@click.option("--limit", type=int, default=None, help="At most this many windows per stream")
@click.option("--dry-run", is_flag=True, help="Show what would be compacted; change nothing")
@handle_errors
def compact(job: str | None, limit: int | None, dry_run: bool) -> None:
    """Compact committed versions: every fully synced epoch of a stream becomes one version
    (same rows; queries read one manifest and a few files instead of one per range). The
    replaced versions leave queries at once and are collected by `gc --versions` after
    TRACE_VERSION_GRACE_SECONDS."""
    from trace_core.engine.integrity import compact_streams

    for stream, report in compact_streams(runtime(), job, dry_run=dry_run, limit=limit):
        console.print(
            f"{stream.job_name}/{stream.dataset_key} (epochs of {stream.epoch_blocks:,} blocks): "
            f"{report.line()}",
            highlight=False,
        )
