"""User-defined functions: the contract (payload, limits, result, ``RuntimeInvoker``), the local
bubblewrap sandbox, AWS Lambda, and content-addressed code bundles. See docs/udf.md."""

from trace_core.errors import SandboxUnavailable, UdfError, UdfRuntimeError
from trace_core.udf.arrowio import ipc_to_table, table_to_ipc
from trace_core.udf.factory import invoker_from_settings
from trace_core.udf.local import LocalSandboxInvoker
from trace_core.udf.payload import (
    UDF_CAUSES,
    RuntimeInvoker,
    UdfInvocationPayload,
    UdfKind,
    UdfLimits,
    UdfResult,
    UdfStats,
    source_sha256,
)

__all__ = [
    "UDF_CAUSES",
    "LocalSandboxInvoker",
    "RuntimeInvoker",
    "SandboxUnavailable",
    "UdfError",
    "UdfInvocationPayload",
    "UdfKind",
    "UdfLimits",
    "UdfResult",
    "UdfRuntimeError",
    "UdfStats",
    "invoker_from_settings",
    "ipc_to_table",
    "source_sha256",
    "table_to_ipc",
]
