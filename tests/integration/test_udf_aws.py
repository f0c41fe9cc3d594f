"""``AwsLambdaInvoker`` against moto's Lambda over real HTTP.

moto runs Lambda code only in Docker, which these machines lack; so the tests cover what moto
serves: creating the function from ``lambda_code_zip()``, and invoke requests through boto3 and
botocore, with the function's answer queued in moto ("lambda simple" mode) as the REAL handler
computed it from the same payload (the handler itself runs here, from the unpacked zip, in a
separate interpreter). Docker-less moto's own error answer checks the retryable path."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from trace_core.errors import UdfError, UdfRuntimeError
from trace_core.udf import UdfInvocationPayload, UdfLimits
from trace_core.udf.aws import (
    HANDLER,
    AwsLambdaInvoker,
    create_udf_function,
    lambda_code_zip,
    lambda_event,
)


def _moto_post(url: str, path: str, body: dict[str, Any]) -> None:
    req = urllib.request.Request(
        url + path,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(req).read()


@pytest.fixture
def lam(moto_server_url: str) -> Iterator[tuple[Any, str]]:
    iam = boto3.client("iam", endpoint_url=moto_server_url, region_name="us-east-1")
    role = iam.create_role(RoleName="trace-udf", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    client = boto3.client("lambda", endpoint_url=moto_server_url, region_name="us-east-1")
    create_udf_function(client, "trace-udf", role, UdfLimits(memory_mb=256, wall_seconds=12.5))
    yield client, moto_server_url
    client.delete_function(FunctionName="trace-udf")
    iam.delete_role(RoleName="trace-udf")


def _handler_answer(tmp_path: Path, payload: UdfInvocationPayload) -> str:
    """Run the packaged handler (unzipped, no trace_core on its path) on the payload's event."""
    pkg = tmp_path / "pkg"
    with zipfile.ZipFile(__import__("io").BytesIO(lambda_code_zip())) as z:
        z.extractall(pkg)
    code = (
        "import json, sys; sys.path[:0] = [sys.argv[1]]; import lambda_handler; "
        "print(json.dumps(lambda_handler.handler(json.load(sys.stdin))))"
    )
    import pyarrow

    site = str(Path(pyarrow.__file__).parents[1])
    out = subprocess.run(
        [sys.executable, "-S", "-c", code, str(pkg)],
        input=json.dumps(lambda_event(payload)),
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": site},
    )
    return out.stdout.strip()


def test_function_is_created_from_the_package(lam: tuple[Any, str]) -> None:
    client, _ = lam
    conf = client.get_function(FunctionName="trace-udf")["Configuration"]
    assert (conf["Handler"], conf["MemorySize"], conf["Timeout"]) == (HANDLER, 384, 13)


def test_invoke_round_trip_with_the_real_handlers_answer(
    lam: tuple[Any, str], tmp_path: Path
) -> None:
    client, url = lam
    ok = UdfInvocationPayload(
        source="def main(x):\n    print('hi')\n    return {'n': x + 1}\n", input=41
    )
    bad = UdfInvocationPayload(source="def main(x):\n    return {'a': 1} / 2\n")
    answers = [_handler_answer(tmp_path, ok), _handler_answer(tmp_path, bad)]
    _moto_post(url, "/moto-api/config", {"lambda": {"use_docker": False}})
    try:
        _moto_post(
            url,
            "/moto-api/static/lambda-simple/response",
            {"results": answers, "region": "us-east-1"},
        )
        inv = AwsLambdaInvoker("trace-udf", client)
        res = inv.invoke(ok)
        assert (res.value, res.logs, res.runtime) == ({"n": 42}, "hi\n", "lambda")
        with pytest.raises(UdfError) as info:
            inv.invoke(bad)
        assert info.value.cause == "raised" and info.value.exc_type == "TypeError"
        # with no queued answer moto echoes the request: not the handler's shape
        with pytest.raises(UdfRuntimeError, match="lacks the handler's status"):
            inv.invoke(ok)
    finally:
        _moto_post(url, "/moto-api/config", {"lambda": {"use_docker": True}})


def test_runtime_failures_are_retryable_and_big_payloads_refused(lam: tuple[Any, str]) -> None:
    client, _ = lam
    inv = AwsLambdaInvoker("trace-udf", client)
    # moto without Docker answers with a function error: the runtime failed, not the UDF
    with pytest.raises(UdfRuntimeError):
        inv.invoke(UdfInvocationPayload(source="def main(x):\n    return 1\n"))
    with pytest.raises(UdfRuntimeError, match="failed"):
        AwsLambdaInvoker("no-such-function", client).invoke(
            UdfInvocationPayload(source="def main(x):\n    return 1\n")
        )
    with pytest.raises(UdfError) as info:
        inv.invoke(
            UdfInvocationPayload(source="def main(x):\n    return 1\n", input="x" * (7 << 20))
        )
    assert info.value.cause == "input_too_large"
