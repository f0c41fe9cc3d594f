"""deploy/cdk: synthesize the AWS stack once, lint it with cfn-lint, deploy it onto moto's
CloudFormation and use the deployed bucket and queues by the stack outputs' names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
import warnings
from pathlib import Path
from typing import Any

import boto3
import pytest

from trace_core.settings import REPO_ROOT

APP = REPO_ROOT / "deploy" / "cdk" / "app.py"
# A region no other test uses on the shared moto server: the stack's queue, cluster and log group
# names are fixed by its context.
REGION = "ap-southeast-2"
# Resource types moto's CloudFormation skips with a warning (listed in deploy/README.md).
MOTO_SKIPS = {
    "AWS::SecretsManager::Secret",
    "AWS::SecretsManager::SecretTargetAttachment",
    "AWS::S3::BucketPolicy",
    "AWS::SQS::QueuePolicy",
}


def _synth(outdir: Path, context: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CDK_OUTDIR": str(outdir), "CDK_CONTEXT_JSON": json.dumps(context or {})}
    return subprocess.run(
        [sys.executable, str(APP)], env=env, capture_output=True, text=True, timeout=240
    )


@pytest.fixture(scope="module")
def template_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthesized template (one synth per module: jsii starts node, several seconds)."""
    outdir = tmp_path_factory.mktemp("cdk.out")
    result = _synth(outdir)
    assert result.returncode == 0, result.stderr
    return outdir / "TraceStack.template.json"


@pytest.fixture(scope="module")
def template(template_path: Path) -> dict[str, Any]:
    return dict(json.loads(template_path.read_text()))


def _resources(template: dict[str, Any], kind: str) -> dict[str, Any]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def test_template_passes_cfn_lint(template_path: Path) -> None:
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("cfn-lint")),
            "--config-file",
            str(APP.with_name(".cfnlintrc.yaml")),
            str(template_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_worker_role_touches_only_its_prefixes(template: dict[str, Any]) -> None:
    """Staging and versions (read/write, listable), UDF bundles (read) and sink batches."""
    (worker_role,) = [k for k in _resources(template, "AWS::IAM::Role") if "WorkerRole" in k]
    policies = [
        p
        for p in _resources(template, "AWS::IAM::Policy").values()
        if {"Ref": worker_role} in p["Properties"]["Roles"]
    ]
    statements = [s for p in policies for s in p["Properties"]["PolicyDocument"]["Statement"]]
    s3 = [s for s in statements if any(a.startswith("s3:") for a in _list(s["Action"]))]
    datasets = [s for s in s3 if "DatasetsBucket" in json.dumps(s["Resource"])]
    object_paths = {
        part
        for s in datasets
        for r in _list(s["Resource"])
        if isinstance(r, dict)
        for part in r.get("Fn::Join", ["", []])[1]
        if isinstance(part, str) and part.startswith("/")
    }
    assert object_paths == {
        "/trace/staging/*",
        "/trace/cryo/*",
        "/trace/udf/bundles/*",
        "/trace/batches/*",
    }
    bundles = [s for s in datasets if "/trace/udf/bundles/*" in json.dumps(s["Resource"])]
    assert [_list(s["Action"]) for s in bundles] == [["s3:GetObject"]]  # read only
    (listing,) = [s for s in datasets if s["Action"] == "s3:ListBucket"]
    assert listing["Condition"] == {
        "StringLike": {"s3:prefix": ["trace/staging/*", "trace/cryo/*"]}
    }
    # Nothing else in S3 but its own Dagster compute logs in scratch; no wildcard resources.
    others = [s for s in s3 if s not in datasets]
    assert all("ScratchBucket" in json.dumps(s["Resource"]) for s in others)
    assert all("dagster-compute-logs/*" in json.dumps(s["Resource"]) for s in others)
    assert not any(s["Resource"] == "*" for s in statements)


def test_the_attempt_role_allows_only_reading_versions_and_writing_staging(
    template: dict[str, Any],
) -> None:
    """The Credential Broker's role: assumed by the worker role only; its own policy (which a
    session policy narrows further per attempt) reads cryo/ and writes staging/, nothing else;
    every task's environment names it (TRACE_WORKER_S3_ROLE_ARN)."""
    roles = _resources(template, "AWS::IAM::Role")
    (attempt,) = [k for k in roles if "AttemptRole" in k]
    (worker,) = [k for k in roles if "WorkerRole" in k]
    trust = roles[attempt]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert worker in json.dumps(trust) and "ecs-tasks" not in json.dumps(trust)
    statements = [
        s
        for p in _resources(template, "AWS::IAM::Policy").values()
        if {"Ref": attempt} in p["Properties"]["Roles"]
        for s in p["Properties"]["PolicyDocument"]["Statement"]
    ]
    grants = {
        (tuple(_list(s["Action"])), part)
        for s in statements
        for r in _list(s["Resource"])
        for part in r["Fn::Join"][1]
        if isinstance(part, str) and part.startswith("/")
    }
    assert grants == {
        (("s3:GetObject",), "/trace/cryo/*"),
        (("s3:PutObject", "s3:AbortMultipartUpload"), "/trace/staging/*"),
    }
    assume = [
        s
        for p in _resources(template, "AWS::IAM::Policy").values()
        if {"Ref": worker} in p["Properties"]["Roles"]
        for s in p["Properties"]["PolicyDocument"]["Statement"]
        if s["Action"] == "sts:AssumeRole"
    ]
    assert len(assume) == 1 and attempt in json.dumps(assume[0]["Resource"])
    for definition in _resources(template, "AWS::ECS::TaskDefinition").values():
        (container,) = definition["Properties"]["ContainerDefinitions"]
        env = {e["Name"]: e["Value"] for e in container["Environment"]}
        assert attempt in json.dumps(env["TRACE_WORKER_S3_ROLE_ARN"])


def test_every_container_names_the_worker_role_for_runs(template: dict[str, Any]) -> None:
    """The code servers report DAGSTER_CONTAINER_CONTEXT; runs then take the worker role."""
    (worker_role,) = [k for k in _resources(template, "AWS::IAM::Role") if "WorkerRole" in k]
    definitions = _resources(template, "AWS::ECS::TaskDefinition").values()
    assert len(definitions) == 4
    for definition in definitions:
        (container,) = definition["Properties"]["ContainerDefinitions"]
        env = {e["Name"]: e["Value"] for e in container["Environment"]}
        context = json.dumps(env["DAGSTER_CONTAINER_CONTEXT"])
        assert "task_role_arn" in context and worker_role in context
        secrets = container["Secrets"]  # references (ValueFrom) only, never values
        assert len(secrets) == 4 and all(set(x) == {"Name", "ValueFrom"} for x in secrets)


def test_bucket_lifecycle_rules(template: dict[str, Any]) -> None:
    buckets = _resources(template, "AWS::S3::Bucket")
    rules = {
        name.split("Bucket")[0]: {
            r["Id"]: r for r in b["Properties"]["LifecycleConfiguration"]["Rules"]
        }
        for name, b in buckets.items()
    }
    assert set(rules) == {"Datasets", "Results", "Scratch"}
    assert rules["Datasets"]["expire-staging"]["Prefix"] == "trace/staging/"
    assert rules["Datasets"]["expire-staging"]["ExpirationInDays"] == 7
    assert rules["Datasets"]["expire-exports"]["Prefix"] == "trace/results/"
    # Committed versions (trace/cryo/) never expire: every expiring rule has another prefix.
    expiring = [r for r in rules["Datasets"].values() if "ExpirationInDays" in r]
    assert {r["Prefix"] for r in expiring} == {"trace/staging/", "trace/results/"}
    assert rules["Results"]["expire-results"]["ExpirationInDays"] == 7
    assert rules["Scratch"]["expire-scratch"]["ExpirationInDays"] == 3
    assert all("abort-incomplete-uploads" in r for r in rules.values())


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


@pytest.fixture(scope="module")
def deployed(template_path: Path, moto_server_url: str) -> tuple[dict[str, str], set[str]]:
    """The template created on moto's CloudFormation: (outputs, resource types moto skipped)."""
    cloudformation = boto3.client(
        "cloudformation", endpoint_url=moto_server_url, region_name=REGION
    )
    name = f"trace-{uuid.uuid4().hex[:8]}"
    with warnings.catch_warnings(record=True) as caught:
        # moto warns from its server thread; the warning filters are process-wide.
        warnings.simplefilter("always")
        cloudformation.create_stack(
            StackName=name,
            TemplateBody=template_path.read_text(),
            Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"],
        )
        (stack,) = cloudformation.describe_stacks(StackName=name)["Stacks"]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
    prefix = "Tried to parse "
    skipped = {
        str(w.message)[len(prefix) :].split()[0]
        for w in caught
        if str(w.message).startswith(prefix)
    }
    # Not deleted: moto's delete_stack fails on the VPC (DependencyViolation); the server is
    # per session and the names are unique to this module.
    return {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}, skipped


def test_moto_skips_only_the_documented_resource_types(
    deployed: tuple[dict[str, str], set[str]],
) -> None:
    _, skipped = deployed
    assert skipped == MOTO_SKIPS
    readme = (REPO_ROOT / "deploy" / "README.md").read_text()
    assert all(f"`{kind}`" in readme for kind in MOTO_SKIPS)


def test_deployed_bucket_and_queues_work_by_output_names(
    deployed: tuple[dict[str, str], set[str]], moto_server_url: str
) -> None:
    outputs, _ = deployed
    s3 = boto3.client("s3", endpoint_url=moto_server_url, region_name=REGION)
    bucket = outputs["DatasetsBucketName"]
    s3.put_object(Bucket=bucket, Key="trace/staging/t/1/part.parquet", Body=b"PAR1")
    got = s3.get_object(Bucket=bucket, Key="trace/staging/t/1/part.parquet")
    assert got["Body"].read() == b"PAR1"
    # moto's CloudFormation applies neither LifecycleConfiguration nor VersioningConfiguration
    # (deploy/README.md); the template's rules are checked in test_bucket_lifecycle_rules.

    sqs = boto3.client("sqs", endpoint_url=moto_server_url, region_name=REGION)
    for label in ("Task", "Buffer"):
        url = sqs.get_queue_url(QueueName=outputs[f"{label}QueueUrl"].rsplit("/", 1)[1])["QueueUrl"]
        dlq = sqs.get_queue_url(QueueName=outputs[f"{label}DlqUrl"].rsplit("/", 1)[1])["QueueUrl"]
        body = json.dumps({"probe": label})
        sqs.send_message(QueueUrl=url, MessageBody=body)
        (message,) = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1)["Messages"]
        assert message["Body"] == body
        sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        redrive = json.loads(attributes["RedrivePolicy"])
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])
        assert redrive["deadLetterTargetArn"] == dlq_arn["Attributes"]["QueueArn"]
        assert int(redrive["maxReceiveCount"]) == 5
        assert attributes["VisibilityTimeout"] == "300"


@pytest.mark.parametrize(
    ("context", "named"),
    [
        ({"trace:dbInstanceClass": "t3.huge"}, "trace:dbInstanceClass='t3.huge'"),
        ({"trace:logRetentionDays": -1}, "trace:logRetentionDays=-1"),
        ({"trace:queueRetentionDays": "30"}, "trace:queueRetentionDays=30"),
        ({"trace:runMemoryMib": "1000"}, "trace:runMemoryMib=1000"),
        ({"trace:maxAzs": "two"}, "trace:maxAzs='two'"),
    ],
)
def test_invalid_context_fails_synth_naming_the_key(
    context: dict[str, Any], named: str, tmp_path: Path
) -> None:
    result = _synth(tmp_path / "out", context)
    assert result.returncode == 2
    assert named in result.stderr
    assert not (tmp_path / "out").exists()
