"""Integrity for the shell: the scheduled pass (``integrity.verify.integrity_tick``) and the
per-stream verification its asset checks run, re-exported so the shell needs only the engine."""

from __future__ import annotations

from trace_core.chain_sync.store import StreamRow
from trace_core.integrity.verify import RangeResult, integrity_tick, select_streams

__all__ = ["RangeResult", "StreamRow", "integrity_tick", "select_streams"]
