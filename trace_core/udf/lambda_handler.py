"""The AWS Lambda handler for UDF calls (deployed with Trace's package; stdlib + pyarrow at
run time). It runs the same code path as a sandboxed call, in-process: inside Lambda, the
micro-VM is the isolation boundary and the function's configuration its limits."""

from __future__ import annotations

import base64
import time
from typing import Any

try:
    from trace_core.udf.sandbox import wire
    from trace_core.udf.sandbox.worker import run
except ImportError:  # packaged alone (``lambda_code_zip``): the sandbox modules at the root
    import wire  # type: ignore[import-not-found,no-redef]
    from worker import run  # type: ignore[import-not-found,no-redef]


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    tables = {n: base64.b64decode(b) for n, b in (event.get("tables") or {}).items()}
    header = {
        "kind": event["kind"],
        "entry": event.get("entry", "main"),
        "source": event["source"],
        "filename": event.get("filename") or "udf.py",
        "input": event.get("input"),
        "tables": [[n, len(b)] for n, b in tables.items()],
    }
    t0 = time.monotonic()
    cpu0 = time.process_time()
    out_header, blobs = run(header, b"".join(tables.values()), event["limits"])
    response = b"".join(wire.encode(out_header, blobs))
    return {
        "status": {
            "exit": 0,
            "timed_out": False,
            "wall_ms": round((time.monotonic() - t0) * 1000, 3),
            "cpu_ms": round((time.process_time() - cpu0) * 1000, 3),
        },
        "response_b64": base64.b64encode(response).decode(),
    }
