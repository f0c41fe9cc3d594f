"""The Credential Broker on moto's server: with ``TRACE_WORKER_S3_ROLE_ARN`` set and an S3
object store, each claimed attempt gets its own STS credentials whose session policy is the
attempt's (its inputs' version prefixes, its staging prefix), and the operator stages through
them; without the setting nothing changes. moto records session policies without enforcing
them: tests/unit/test_credential_broker_policy.py evaluates the policy itself."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_query_service import blocks_table, publish
from trace_core.datasets import ids
from trace_core.engine.execute import execute_task
from trace_core.operators.base import Completion, OperatorContext, OperatorRegistry
from trace_core.query.tokens import DatasetPin
from trace_core.runtime import Runtime
from trace_core.settings import Settings
from trace_core.storage.broker import attempt_policy
from trace_core.storage.s3 import S3Store
from trace_core.tasks.lifecycle import create_task

ROLE = "arn:aws:iam::123456789012:role/trace-worker"


def _run_probe(rt: Runtime, grants: list[dict[str, Any]]) -> tuple[OperatorContext, uuid.UUID]:
    seen: list[OperatorContext] = []

    def probe(ctx: OperatorContext) -> Completion:
        seen.append(ctx)
        prefix = ids.staging_prefix(ctx.lease.task_id, ctx.lease.attempt)
        ctx.staging_store.put_bytes(prefix + "out.parquet", b"staged")
        return Completion(outputs={"ok": True})

    registry = OperatorRegistry()
    registry.register("probe", probe)
    task_id = uuid.uuid4()
    with rt.state() as conn, conn.transaction():
        create_task(conn, task_id=task_id, operator="probe", payload={"grants": grants})
    outcome = execute_task(rt, task_id, registry)
    assert outcome.status == "succeeded", outcome.error
    return seen[0], task_id


@pytest.fixture
def s3_settings(settings: Settings, moto_server_url: str) -> Settings:
    bucket = f"cb-{uuid.uuid4().hex[:12]}"
    S3Store(bucket, "trace", endpoint_url=moto_server_url).ensure_bucket()
    return settings.model_copy(
        update={"s3_endpoint_url": moto_server_url, "object_store_url": f"s3://{bucket}/trace"}
    )


def test_each_attempt_stages_through_its_own_scoped_credentials(
    s3_settings: Settings, tmp_path: Path
) -> None:
    from moto.sts.models import sts_backends

    cfg = s3_settings.model_copy(update={"worker_s3_role_arn": ROLE})
    rt = Runtime(cfg)
    store = rt.store
    assert isinstance(store, S3Store)
    rec = publish(cfg, store, tmp_path, blocks_table(0, 50), end=50)
    grants = [DatasetPin.of(rec).model_dump(mode="json")]
    backend = sts_backends["123456789012"]["global"]
    before = len(backend.assumed_roles)

    ctx, task_id = _run_probe(rt, grants)

    assumed = backend.assumed_roles[before:]
    assert len(assumed) == 1 and assumed[0].role_arn == ROLE
    policy = json.loads(assumed[0].policy)
    assert policy == attempt_policy(
        store.bucket, "trace/", [rec.storage_prefix], ids.staging_prefix(task_id, 1)
    )
    assert ctx.credentials is not None
    assert ctx.credentials.access_key_id == assumed[0].access_key_id
    assert ctx.credentials.access_key_id not in repr(ctx.credentials.secret_access_key)
    assert ctx.credentials.secret_access_key not in repr(ctx.credentials)
    # the operator's store signs with the attempt's key, the runtime's with the worker's own
    scoped = ctx.staging_store
    assert isinstance(scoped, S3Store) and scoped is not store
    signer = scoped.client._request_signer._credentials  # what boto3 signs requests with
    assert signer.access_key == assumed[0].access_key_id and signer.token
    assert store.client._request_signer._credentials.access_key != assumed[0].access_key_id
    assert store.get_bytes(ids.staging_prefix(task_id, 1) + "out.parquet") == b"staged"

    # a second attempt of another task gets its own credentials and policy
    _run_probe(rt, [])
    later = backend.assumed_roles[before + 1 :]
    assert len(later) == 1 and later[0].access_key_id != assumed[0].access_key_id
    assert [s["Sid"] for s in json.loads(later[0].policy)["Statement"]] == ["WriteStaging"]


def test_without_the_setting_workers_keep_their_own_credentials(
    s3_settings: Settings,
) -> None:
    from moto.sts.models import sts_backends

    rt = Runtime(s3_settings)
    backend = sts_backends["123456789012"]["global"]
    before = len(backend.assumed_roles)
    ctx, _ = _run_probe(rt, [])
    assert ctx.credentials is None and ctx.staging_store is rt.store
    assert len(backend.assumed_roles) == before
