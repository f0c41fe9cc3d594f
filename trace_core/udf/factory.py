"""Pick the UDF runtime from settings (``TRACE_UDF_RUNTIME``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from trace_core.udf.payload import RuntimeInvoker

if TYPE_CHECKING:
    from trace_core.settings import Settings


def invoker_from_settings(settings: Settings) -> RuntimeInvoker:
    """``local`` (default): the bubblewrap sandbox; ``lambda``: AWS Lambda
    (``TRACE_UDF_LAMBDA_FUNCTION``); ``unsandboxed``: trusted local development only, warns on
    every call. Constructing starts nothing: the first call does (or raises
    ``SandboxUnavailable``)."""
    mode = settings.udf_runtime
    if mode == "lambda":
        from trace_core.udf.aws import AwsLambdaInvoker

        return AwsLambdaInvoker.from_settings(settings)
    from trace_core.udf.local import LocalSandboxInvoker

    return LocalSandboxInvoker(
        pool_size=settings.udf_pool_size,
        unsandboxed=mode == "unsandboxed",
        bwrap=settings.udf_bwrap_path,
    )
