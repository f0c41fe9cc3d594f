"""Frames on the pipes between Trace and a UDF worker (stdlib only: runs in the sandbox too).

A frame is ``MAGIC``, a 4-byte header length, an 8-byte blob length, a JSON header and the
blobs concatenated (their lengths are in the header). Readers are bounded: a frame past
``max_bytes`` raises ``FrameError`` before its body is read.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

MAGIC = b"TUDF"
PREFIX = struct.Struct("<4sIQ")
MAX_HEADER = 64 * 1024 * 1024


class FrameError(Exception):
    """A malformed, truncated or oversized frame."""


def encode(header: dict[str, Any], blobs: list[Any] | tuple[Any, ...] = ()) -> list[Any]:
    """The frame's parts (``blobs`` may be any bytes-like objects: they are not copied)."""
    head = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    blobs = [memoryview(b).cast("B") for b in blobs]
    total = sum(b.nbytes for b in blobs)
    return [PREFIX.pack(MAGIC, len(head), total), head, *blobs]


def write_all(fd: int, parts: list[Any]) -> None:
    for part in parts:
        view = memoryview(part)
        while view:
            n = os.write(fd, view)
            view = view[n:]


def read_exact(fd: int, n: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = os.readv(fd, [view[got:]])
        if k == 0:
            raise FrameError(f"pipe closed after {got} of {n} bytes")
        got += k
    return buf


def read_frame(fd: int, max_bytes: int) -> tuple[dict[str, Any], bytearray]:
    """Read one frame from ``fd``: (header, blob bytes). Raises ``FrameError``."""
    prefix = read_exact(fd, PREFIX.size)
    magic, hlen, blen = PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise FrameError("bad frame magic")
    if hlen > MAX_HEADER or hlen + blen > max_bytes:
        raise FrameError(f"frame of {hlen + blen} bytes is past the cap of {max_bytes}")
    try:
        header = json.loads(read_exact(fd, hlen))
    except ValueError as exc:
        raise FrameError(f"bad frame header: {exc}") from None
    if not isinstance(header, dict):
        raise FrameError("frame header is not an object")
    return header, read_exact(fd, blen) if blen else bytearray()


def split_blobs(blob: bytes | bytearray, lengths: list[int]) -> list[memoryview]:
    if sum(lengths) != len(blob):
        raise FrameError("blob lengths do not add up")
    out, pos, view = [], 0, memoryview(blob)
    for n in lengths:
        out.append(view[pos : pos + n])
        pos += n
    return out
