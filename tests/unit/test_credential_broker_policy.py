"""The Credential Broker's session policy under a real IAM policy evaluator (moto's
``moto.iam.access_control.IAMPolicy``, the one moto's server uses when it enforces identity
policies): an attempt may read its inputs' version prefixes and write its own staging prefix,
and nothing else: not other versions of the same datasets, not another org's datasets, not
committed versions (its inputs' included) for writing, not another attempt's staging.

moto's evaluator treats ``*`` as "any characters" and does not escape other regex characters;
that only ever makes it more permissive than AWS, so a request it denies AWS denies too."""

from __future__ import annotations

import json
import uuid

import pytest
from moto.iam.access_control import IAMPolicy, PermissionResult

from trace_core.datasets import ids
from trace_core.errors import StorageError
from trace_core.storage.broker import attempt_policy

BUCKET = "trace-data"
BASE = "trace/"
ORG_A = uuid.UUID(int=0xA)
ORG_B = uuid.UUID(int=0xB)
CHAIN = 1
TASK = uuid.UUID(int=0x7A5C)
ATTEMPT = 2


def version(org: uuid.UUID, key: str, start: int, config: str = "cfg") -> str:
    duid = ids.dataset_uuid(org, CHAIN, key)
    ver = ids.dataset_version(duid, config, CHAIN, start, start + 100)
    return ids.version_prefix(CHAIN, duid, start, start + 100, ver)


INPUTS = [version(ORG_A, "blocks", 0), version(ORG_A, "logs", 0)]
STAGING = ids.staging_prefix(TASK, ATTEMPT)


def allowed(action: str, key: str, bucket: str = BUCKET) -> bool:
    policy = attempt_policy(BUCKET, BASE, INPUTS, STAGING)
    result = IAMPolicy(json.dumps(policy)).is_action_permitted(
        action, f"arn:aws:s3:::{bucket}/{key}"
    )
    return result == PermissionResult.PERMITTED


@pytest.mark.parametrize("prefix", INPUTS)
def test_reads_its_inputs_versions(prefix: str) -> None:
    assert allowed("s3:GetObject", f"{BASE}{prefix}blocks_0_100_0.parquet")
    assert allowed("s3:GetObject", f"{BASE}{prefix}_manifest.json")


def test_writes_its_own_staging_prefix() -> None:
    assert allowed("s3:PutObject", f"{BASE}{STAGING}blocks_0_100.parquet")
    assert allowed("s3:AbortMultipartUpload", f"{BASE}{STAGING}blocks_0_100.parquet")


@pytest.mark.parametrize(
    ("action", "key"),
    [
        # another version of the same dataset (an older or a newer commit), another range
        ("s3:GetObject", version(ORG_A, "blocks", 0, config="other") + "x.parquet"),
        ("s3:GetObject", version(ORG_A, "blocks", 100) + "x.parquet"),
        # a dataset the attempt was not granted, and another org's same-named dataset
        ("s3:GetObject", version(ORG_A, "transactions", 0) + "x.parquet"),
        ("s3:GetObject", version(ORG_B, "blocks", 0) + "x.parquet"),
        # committed versions are never writable, its own inputs' included
        ("s3:PutObject", INPUTS[0] + "x.parquet"),
        ("s3:PutObject", INPUTS[0] + "_manifest.json"),
        ("s3:PutObject", version(ORG_B, "blocks", 0) + "x.parquet"),
        # another attempt's or task's staging, and a prefix that merely starts alike
        ("s3:PutObject", ids.staging_prefix(TASK, 1) + "x.parquet"),
        ("s3:PutObject", ids.staging_prefix(TASK, 20) + "x.parquet"),
        ("s3:PutObject", ids.staging_prefix(uuid.UUID(int=1), ATTEMPT) + "x.parquet"),
        ("s3:GetObject", ids.staging_prefix(TASK, 1) + "x.parquet"),
        # no delete, no listing, no reading its own staging back, no other action
        ("s3:DeleteObject", STAGING + "x.parquet"),
        ("s3:DeleteObject", INPUTS[0] + "x.parquet"),
        ("s3:GetObject", STAGING + "x.parquet"),
        ("s3:PutObjectAcl", STAGING + "x.parquet"),
        ("s3:GetObject", "exports/q.parquet"),
    ],
)
def test_denied_everywhere_else(action: str, key: str) -> None:
    assert not allowed(action, f"{BASE}{key}")


def test_outside_the_store_prefix_and_bucket() -> None:
    assert not allowed("s3:GetObject", f"{INPUTS[0]}x.parquet")  # without the base prefix
    assert not allowed("s3:GetObject", f"{BASE}{INPUTS[0]}x.parquet", bucket="other-bucket")
    assert not allowed("s3:ListBucket", "")


def test_an_evaluator_that_allowed_everything_would_be_caught() -> None:
    """The checks above can fail: a policy allowing s3:* on the bucket permits a write to a
    committed version under the same evaluator."""
    wide = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:*", "Resource": f"arn:aws:s3:::{BUCKET}/*"}
    ]}  # fmt: skip
    got = IAMPolicy(json.dumps(wide)).is_action_permitted(
        "s3:PutObject", f"arn:aws:s3:::{BUCKET}/{BASE}{INPUTS[0]}x.parquet"
    )
    assert got == PermissionResult.PERMITTED


def test_no_inputs_means_no_read_statement() -> None:
    policy = attempt_policy(BUCKET, "", [], STAGING)
    assert [s["Sid"] for s in policy["Statement"]] == ["WriteStaging"]


def test_refuses_wildcards_and_policies_over_the_cap() -> None:
    with pytest.raises(ValueError):
        attempt_policy(BUCKET, BASE, ["cryo/*/"], STAGING)
    with pytest.raises(ValueError):
        attempt_policy(BUCKET, BASE, INPUTS, "staging/no-slash")
    many = [version(ORG_A, f"d{n}", 0) for n in range(40)]  # 40 datasets: too many
    with pytest.raises(StorageError, match="over 2048"):
        attempt_policy(BUCKET, BASE, many, STAGING)


def test_many_versions_widen_to_their_datasets_only() -> None:
    """40 ranges of one dataset do not fit as versions: reads widen to that dataset's
    prefix, which still excludes other datasets and other orgs, and writes stay staging."""
    many = [version(ORG_A, "blocks", n * 100) for n in range(40)]
    policy = attempt_policy(BUCKET, BASE, many, STAGING)
    assert len(json.dumps(policy, separators=(",", ":"))) <= 2048
    evaluator = IAMPolicy(json.dumps(policy))

    def ok(action: str, key: str) -> bool:
        got = evaluator.is_action_permitted(action, f"arn:aws:s3:::{BUCKET}/{BASE}{key}")
        return got == PermissionResult.PERMITTED

    assert ok("s3:GetObject", many[7] + "x.parquet")
    assert not ok("s3:GetObject", version(ORG_A, "logs", 0) + "x.parquet")
    assert not ok("s3:GetObject", version(ORG_B, "blocks", 0) + "x.parquet")
    assert not ok("s3:PutObject", many[7] + "x.parquet")
    assert ok("s3:PutObject", STAGING + "x.parquet")
