"""Real extraction for cryo_ingest: cryo against a pool's endpoints, splitting refused ranges.

``extract_real`` first checks the pool (``RpcPool.check``: right chain, head past the range,
not stale), then runs ``cryo.freeze`` for the range on the first usable endpoint. When cryo
fails on a part (it raises, or reports errored chunks) and the endpoint still answers, the
provider refused the request or its result size, so the part is retried smaller: first with
half the ``inner_request_size`` (blocks per ``eth_getLogs``, log datasets only), then as two
halves of the block range, down to ``cryo_min_split_blocks``. When the endpoint stops
answering, or refuses even the smallest part, the rest moves to the next usable endpoint.

Every part writes into its own directory, removed if the part fails, so the files left tile
the range exactly (``check_coverage`` verifies it afterwards). URLs never reach a message.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trace_core import profile
from trace_core.errors import CryoFailed, RpcError, StagingFull
from trace_core.rpc.pool import Endpoint, RpcPool
from trace_core.settings import Settings

if TYPE_CHECKING:
    from trace_core.operators.cryo_payload import CryoIngestTask

log = logging.getLogger(__name__)

# datasets cryo reads through eth_getLogs, where inner_request_size is the blocks per request
LOG_DATASETS = frozenset({"logs", "erc20_transfers", "erc721_transfers"})
MAX_FREEZE_CALLS = 64


def freeze(dataset: str, **kwargs: Any) -> dict[str, Any] | None:
    """``cryo.freeze`` without its leak: run ``cryo.async_freeze`` on a private event loop in
    a private thread (safe inside a caller's running loop) and close the loop afterwards.

    ``cryo.freeze`` leaves one unclosed event loop (and its socket pair) per call.
    """
    import cryo

    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="cryo") as pool:
        result: dict[str, Any] | None = pool.submit(
            asyncio.run, cryo.async_freeze(dataset, **kwargs)
        ).result()
    return result


@dataclass
class ExtractReport:
    """How a range was extracted: freeze calls, parts split off, endpoints given up on."""

    calls: int = 0
    splits: int = 0
    inner_request_size: int | None = None
    failovers: list[str] = field(default_factory=list)


def extract_real(
    p: CryoIngestTask,
    pool: RpcPool,
    out_dir: Path,
    settings: Settings,
    rate_share: float | None = None,
    on_checked: Callable[[RpcPool], None] | None = None,
) -> ExtractReport:
    """Check the pool (``RpcPool.check_cached``: at most once per
    ``rpc_probe_ttl_seconds`` while the heads seen cover the range), call ``on_checked`` with
    the usable pool (work to overlap with cryo, the logs check's headers), then extract ``[range_start, range_end)`` into ``out_dir``, at most
    ``rate_share`` requests per second (this extraction's share of the pool's rate,
    ``rpc_limits``) and at most the endpoint's own rate limit.

    Raises ``RpcError`` (no endpoint answers), ``ChainMismatch`` (every endpoint serves
    another chain), ``CoverageError`` (no endpoint has the range's last block yet) or
    ``CryoFailed`` (every usable endpoint refused a part even at the smallest size).
    """
    with profile.phase("probe"):
        usable = pool.check_cached(
            p.chain_id, need_block=p.range_end - 1, max_age=settings.rpc_probe_ttl_seconds
        )
    if on_checked is not None:
        on_checked(usable)
    inner: int | None = None
    if p.cryo_dataset_name in LOG_DATASETS:
        inner = int(p.cryo_options.get("inner_request_size") or 1)
    run = _Run(p, usable.endpoints, out_dir, settings, rate_share)
    run.extract(p.range_start, p.range_end, inner)
    run.report.inner_request_size = run.smallest_inner
    if run.report.splits or run.report.failovers:
        log.info(
            "cryo_ingest split or failed over",
            extra={
                "range": f"{p.range_start}:{p.range_end}",
                "calls": run.report.calls,
                "splits": run.report.splits,
                "failovers": run.report.failovers,
                "inner_request_size": run.smallest_inner,
            },
        )
    return run.report


# Below this much free space on the staging filesystem, a failed part is reported as
# StagingFull: cryo's binding says only TypeError('failed') when a write hits ENOSPC.
STAGING_MIN_FREE_BYTES = 1024 * 1024


class _Run:
    def __init__(
        self,
        p: CryoIngestTask,
        endpoints: list[Endpoint],
        out_dir: Path,
        settings: Settings,
        rate_share: float | None,
    ) -> None:
        self.p = p
        self.rate_share = rate_share
        self.endpoints = endpoints
        self.current = 0
        self.out_dir = out_dir
        self.settings = settings
        self.report = ExtractReport()
        self.smallest_inner: int | None = None

    @property
    def endpoint(self) -> Endpoint:
        return self.endpoints[self.current]

    def extract(self, start: int, end: int, inner: int | None) -> None:
        while True:
            if self._freeze(start, end, inner):
                return
            if not self._alive():
                self._fail_over(f"{self.endpoint.label} stopped answering")
                continue
            if inner is not None and inner > 1:
                inner = max(1, inner // 2)  # smaller eth_getLogs ranges
                self.report.splits += 1
                continue
            if end - start > self.settings.cryo_min_split_blocks:
                mid = start + (end - start) // 2
                self.report.splits += 1
                self.extract(start, mid, inner)
                self.extract(mid, end, inner)
                return
            self._fail_over(f"{self.endpoint.label} refused blocks [{start}, {end})")

    def _fail_over(self, why: str) -> None:
        self.report.failovers.append(why)
        if self.current + 1 >= len(self.endpoints):
            raise CryoFailed(
                f"cryo {self.p.cryo_dataset_name} failed on pool {self.p.rpc_pool}: {why}"
                + (" (no endpoint left)" if len(self.endpoints) > 1 else "")
            )
        self.current += 1

    def _alive(self) -> bool:
        try:
            self.endpoint.client.block_number()
        except RpcError:
            return False
        return True

    def _freeze(self, start: int, end: int, inner: int | None) -> bool:
        if self.report.calls >= MAX_FREEZE_CALLS:
            raise CryoFailed(
                f"cryo {self.p.cryo_dataset_name} on pool {self.p.rpc_pool}: gave up after "
                f"{MAX_FREEZE_CALLS} attempts at parts of [{self.p.range_start}, {self.p.range_end})"
            )
        self.report.calls += 1
        part = self.out_dir / f"part_{start:012}_{end:012}_{self.report.calls}"
        from trace_core.operators.cryo_payload import cryo_kwargs

        share = self.rate_share
        if self.endpoint.rps:
            share = self.endpoint.rps if share is None else min(share, self.endpoint.rps)
        kwargs: dict[str, Any] = {
            "max_retries": self.settings.cryo_max_retries,
            "initial_backoff": self.settings.cryo_initial_backoff_ms,
            **cryo_kwargs(self.p, share),
        }
        if inner is not None:
            kwargs["inner_request_size"] = inner
            self.smallest_inner = min(inner, self.smallest_inner or inner)
        try:
            with profile.phase("cryo"):
                summary = freeze(
                    self.p.cryo_name,
                    blocks=[f"{start}:{end}"],
                    rpc=self.endpoint.url,
                    output_dir=str(part),
                    verbose=False,  # cryo's parse_cli_args turns verbose into no_verbose
                    **kwargs,
                )
        except Exception as exc:  # the binding raises a bare TypeError('failed'); never the URL
            log.info(
                "cryo part failed",
                extra={"range": f"{start}:{end}", "endpoint": self.endpoint.label,
                       "error": type(exc).__name__},
            )  # fmt: skip
            shutil.rmtree(part, ignore_errors=True)
            self._raise_if_staging_full(exc)
            return False
        if int((summary or {}).get("n_errored", 0)):
            shutil.rmtree(part, ignore_errors=True)
            self._raise_if_staging_full(None)
            return False
        return True

    def _raise_if_staging_full(self, cause: BaseException | None) -> None:
        """A full staging disk is no endpoint's fault: no split or failover can help."""
        free = shutil.disk_usage(self.out_dir).free
        if free < STAGING_MIN_FREE_BYTES:
            raise StagingFull(
                f"cryo {self.p.cryo_dataset_name} failed on pool {self.p.rpc_pool}: No space "
                f"left on device in the staging directory {self.out_dir.parent.parent} "
                f"({free} bytes free); free space or set TRACE_CRYO_STAGING_DIR"
            ) from cause
