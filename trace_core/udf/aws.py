"""``AwsLambdaInvoker``: the same UDF payload, run by an AWS Lambda function whose handler is
``trace_core.udf.lambda_handler.handler`` (Lambda's Firecracker micro-VM is the sandbox; the
function's MemorySize and Timeout are its memory and wall limits).

Lambda caps a synchronous request and response at 6 MB each: bigger payloads are refused with
``input_too_large`` / ``output_too_large`` before or after the call.
"""

from __future__ import annotations

import base64
import io
import json
import math
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trace_core.errors import UdfError, UdfRuntimeError
from trace_core.udf.outcome import interpret
from trace_core.udf.payload import UdfInvocationPayload, UdfResult

if TYPE_CHECKING:
    from trace_core.settings import Settings

LAMBDA_PAYLOAD_CAP = 6 * 1024 * 1024
#: The handler inside ``lambda_code_zip()`` (stdlib + pyarrow: add a pyarrow layer).
HANDLER = "lambda_handler.handler"
_UDF_DIR = Path(__file__).resolve().parent


def lambda_event(payload: UdfInvocationPayload) -> dict[str, Any]:
    """The JSON event the handler receives (tables base64-encoded)."""
    return {
        "kind": payload.kind,
        "entry": payload.entry,
        "source": payload.source,
        "filename": payload.filename,
        "input": payload.input,
        "tables": {n: base64.b64encode(b).decode() for n, b in payload.tables.items()},
        "limits": payload.limits.model_dump(),
        "task_id": payload.task_id,
        "attempt": payload.attempt,
    }


def function_config(payload_limits: Any) -> dict[str, int]:
    """MemorySize/Timeout for a Lambda function serving these limits (Lambda's minimums)."""
    return {
        "MemorySize": max(128, int(payload_limits.memory_mb) + 128),
        "Timeout": max(1, math.ceil(payload_limits.wall_seconds)),
    }


def lambda_code_zip() -> bytes:
    """A deployment package of the handler: it needs only the stdlib and pyarrow."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(_UDF_DIR / "lambda_handler.py", "lambda_handler.py")
        for name in ("worker.py", "wire.py", "seccomp_bpf.py"):
            z.write(_UDF_DIR / "sandbox" / name, name)
    return buf.getvalue()


def create_udf_function(
    client: Any, name: str, role_arn: str, limits: Any, *, runtime: str = "python3.11"
) -> dict[str, Any]:
    """Create the Lambda function that serves UDF calls under ``limits`` (idempotent by name:
    an existing function's code and configuration are left as they are)."""
    try:
        return dict(client.get_function(FunctionName=name)["Configuration"])
    except client.exceptions.ResourceNotFoundException:
        pass
    return dict(
        client.create_function(
            FunctionName=name,
            Runtime=runtime,
            Role=role_arn,
            Handler=HANDLER,
            Code={"ZipFile": lambda_code_zip()},
            Description="Trace UDF runtime (trace_core.udf.lambda_handler)",
            **function_config(limits),
        )
    )


class AwsLambdaInvoker:
    """``RuntimeInvoker`` that calls one Lambda function synchronously per UDF call."""

    name = "lambda"

    def __init__(self, function_name: str, client: Any) -> None:
        self.function_name = function_name
        self.client = client

    @classmethod
    def from_settings(cls, settings: Settings) -> AwsLambdaInvoker:
        import boto3

        if not settings.udf_lambda_function:
            from trace_core.errors import ConfigError

            raise ConfigError(
                "TRACE_UDF_RUNTIME=lambda needs TRACE_UDF_LAMBDA_FUNCTION",
                field="udf_lambda_function",
            )
        client = boto3.client(
            "lambda", region_name=settings.aws_region, endpoint_url=settings.lambda_endpoint_url
        )
        return cls(settings.udf_lambda_function, client)

    def invoke(self, payload: UdfInvocationPayload) -> UdfResult:
        from botocore.exceptions import BotoCoreError, ClientError

        body = json.dumps(lambda_event(payload)).encode()
        if len(body) > min(LAMBDA_PAYLOAD_CAP, payload.limits.max_input_bytes):
            raise UdfError(
                "input_too_large",
                f"the Lambda request is {len(body)} bytes, past Lambda's 6 MB (or the job's) cap",
            )
        try:
            resp = self.client.invoke(
                FunctionName=self.function_name, InvocationType="RequestResponse", Payload=body
            )
            raw = resp["Payload"].read(LAMBDA_PAYLOAD_CAP + 1)
        except (ClientError, BotoCoreError) as exc:
            raise UdfRuntimeError(f"Lambda invoke of {self.function_name} failed: {exc}") from exc
        try:
            answer = json.loads(raw)
        except ValueError:
            raise UdfRuntimeError("Lambda answered something other than JSON") from None
        if resp.get("FunctionError"):
            return self._function_error(answer, payload)
        if not isinstance(answer, dict) or "status" not in answer:
            raise UdfRuntimeError("Lambda's answer lacks the handler's status (wrong handler?)")
        out = base64.b64decode(answer.get("response_b64", ""))
        return interpret(payload, answer["status"], out, self.name)

    def _function_error(self, answer: Any, payload: UdfInvocationPayload) -> UdfResult:
        message = str(answer.get("errorMessage", "")) if isinstance(answer, dict) else ""
        kind = str(answer.get("errorType", "")) if isinstance(answer, dict) else ""
        if "timed out" in message:
            raise UdfError("wall_time", f"Lambda timed out: {message}")
        if "OutOfMemory" in kind or "memory" in message.lower():
            raise UdfError("memory", f"Lambda ran out of memory: {message}")
        raise UdfRuntimeError(f"Lambda function error {kind}: {message[:300]}")

    def close(self) -> None:
        pass
