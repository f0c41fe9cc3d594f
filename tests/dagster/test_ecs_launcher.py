"""deploy/dagster.yaml's EcsRunLauncher against moto's ECS: a trace_worker run becomes an ECS
task whose task definition is derived from the daemon's (deploy/ecs/trace-daemon...json).

What stands in for AWS: moto's server (ECS, EC2, Secrets Manager, S3) over real HTTP, and a
loopback HTTP server answering like the ECS agent's task metadata endpoint
(ECS_CONTAINER_METADATA_URI_V4), which the launcher reads to find the daemon's own task.
Dagster's own storage is dagster-postgres on a real Postgres, as the yaml says.
"""

from __future__ import annotations

import json
import shutil
import string
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest
from dagster import DagsterInstance
from dagster._core.remote_origin import RemoteJobOrigin
from dagster._core.test_utils import in_process_test_workspace
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._grpc.types import ExecuteRunArgs
from dagster._serdes import deserialize_value
from dagster_aws.ecs import EcsRunLauncher
from psycopg import sql

import trace_dagster.definitions
from trace_core.db.connection import with_database
from trace_core.runtime import Runtime
from trace_core.settings import REPO_ROOT
from trace_dagster.definitions import build_definitions

DEPLOY = REPO_ROOT / "deploy"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/trace:test"
CLUSTER = "trace"
DAEMON_CONTAINER = "dagster-daemon"
SECRETS = ("TRACE_DATABASE_URL", "DAGSTER_PG_URL", "TRACE_JWT_KEYS", "TRACE_RPC_POOL_STANDARD_URL")


class _TaskMetadata(BaseHTTPRequestHandler):
    """The ECS agent's v4 metadata endpoint: ``/`` names the container, ``/task`` the task."""

    task: dict[str, str] = {}

    def do_GET(self) -> None:
        body = (
            {"Cluster": self.task["Cluster"], "TaskARN": self.task["TaskARN"]}
            if self.path.endswith("/task")
            else {"Name": DAEMON_CONTAINER}
        )
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def aws(moto_server_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """What infrastructure-as-code would have made: a VPC, a cluster, the secrets, the daemon's
    task definition (deploy/ecs) and the daemon running as an ECS task."""
    for name, value in {
        "AWS_ENDPOINT_URL": moto_server_url,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }.items():
        monkeypatch.setenv(name, value)
    ec2, ecs, sm = (boto3.client(s) for s in ("ec2", "ecs", "secretsmanager"))
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(
        GroupName=f"trace-{uuid.uuid4().hex[:8]}", Description="trace tasks", VpcId=vpc
    )["GroupId"]
    cluster_arn = ecs.create_cluster(clusterName=CLUSTER)["cluster"]["clusterArn"]
    secret_arns = {
        name: sm.create_secret(Name=f"trace/{uuid.uuid4().hex[:8]}/{name}", SecretString="x")["ARN"]
        for name in SECRETS
    }
    bucket = f"trace-ecs-{uuid.uuid4().hex[:8]}"
    template = string.Template((DEPLOY / "ecs" / "trace-daemon.task-definition.json").read_text())
    daemon_def = json.loads(
        template.substitute(
            TRACE_IMAGE=IMAGE,
            AWS_REGION="us-east-1",
            TRACE_BUCKET=bucket,
            TRACE_QUERY_URL="http://query.trace.internal:8090",
            TRACE_LOG_GROUP="/trace/dagster",
            TRACE_ECS_EXECUTION_ROLE_ARN="arn:aws:iam::123456789012:role/trace-execution",
            TRACE_ECS_TASK_ROLE_ARN="arn:aws:iam::123456789012:role/trace-task",
            **{f"{name}_SECRET_ARN": arn for name, arn in secret_arns.items()},
        )
    )
    # boto3 validates the file against the RegisterTaskDefinition request shape
    daemon_def_arn = ecs.register_task_definition(**daemon_def)["taskDefinition"][
        "taskDefinitionArn"
    ]
    daemon = ecs.run_task(
        cluster=CLUSTER,
        taskDefinition=daemon_def_arn,
        launchType="FARGATE",
        networkConfiguration={
            "awsvpcConfiguration": {
                "subnets": [subnet],
                "securityGroups": [group],
                "assignPublicIp": "DISABLED",
            }
        },
    )["tasks"][0]
    _TaskMetadata.task = {"Cluster": cluster_arn, "TaskARN": daemon["taskArn"]}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TaskMetadata)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv(
        "ECS_CONTAINER_METADATA_URI_V4", f"http://127.0.0.1:{server.server_port}/v4/daemon"
    )
    try:
        yield {
            "ecs": ecs,
            "cluster_arn": cluster_arn,
            "subnet": subnet,
            "security_group": group,
            "daemon_def": daemon_def,
            "bucket": bucket,
        }
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def deploy_instance(
    aws: dict[str, Any], pg_server_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[DagsterInstance]:
    """A DagsterInstance from deploy/dagster.yaml, its variables set as the task definition
    sets them (Dagster storage in a fresh database on the test Postgres)."""
    name = f"dagster_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = with_database(pg_server_url, name).replace("postgresql://", "postgresql+psycopg2://")
    monkeypatch.setenv("DAGSTER_PG_URL", url)
    monkeypatch.setenv("DAGSTER_MAX_CONCURRENT_RUNS", "8")
    monkeypatch.setenv("DAGSTER_COMPUTE_LOGS_BUCKET", aws["bucket"])
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(DEPLOY / "dagster.yaml", home / "dagster.yaml")
    with DagsterInstance.from_config(str(home)) as instance:
        yield instance
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def _launch_worker_run(instance: DagsterInstance, workspace: Any, task_ids: list[str]) -> str:
    location = workspace.get_code_location(workspace.code_location_names[0])
    remote_job = location.get_repository("__repository__").get_full_job("trace_worker")
    origin: RemoteJobOrigin = remote_job.get_remote_origin()
    run = instance.create_run_for_job(
        job_def=trace_dagster.definitions.defs.resolve_job_def("trace_worker"),
        run_config={"ops": {"execute_tasks": {"config": {"task_ids": task_ids}}}},
        tags={"trace/job": "demo", "trace/stream": "blocks", "trace/range": "0-1000"},
        remote_job_origin=origin,
        job_code_origin=remote_job.get_python_origin(),
    )
    instance.launch_run(run.run_id, workspace)
    return run.run_id


def test_worker_runs_launch_as_ecs_tasks_derived_from_the_daemon(
    aws: dict[str, Any],
    deploy_instance: DagsterInstance,
    trace_env: Runtime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ecs = aws["ecs"]
    assert isinstance(deploy_instance.run_launcher, EcsRunLauncher)
    # `defs` is built once per process from the environment: this test's, restored after
    monkeypatch.setitem(vars(trace_dagster.definitions), "defs", build_definitions(trace_env))
    with in_process_test_workspace(
        deploy_instance,
        LoadableTargetOrigin(
            module_name="trace_dagster.definitions",
            attribute="defs",
            working_directory=str(REPO_ROOT),
        ),
        container_image=IMAGE,
    ) as workspace:
        task_id = str(uuid.uuid4())
        run_id = _launch_worker_run(deploy_instance, workspace, [task_id])
        second_run_id = _launch_worker_run(deploy_instance, workspace, [str(uuid.uuid4())])

    # One task definition registered for the code location, reused by the second run.
    # (moto ignores familyPrefix)
    arns = [a for a in ecs.list_task_definitions()["taskDefinitionArns"] if "/trace-run_" in a]
    assert len(arns) == 1
    registered = ecs.describe_task_definition(taskDefinition=arns[0])["taskDefinition"]
    daemon = aws["daemon_def"]
    (container,) = registered["containerDefinitions"]
    (daemon_container,) = daemon["containerDefinitions"]
    assert container["name"] == "run" and container["image"] == IMAGE
    env = {e["name"]: e["value"] for e in container["environment"]}
    daemon_env = {e["name"]: e["value"] for e in daemon_container["environment"]}
    assert env == daemon_env | {"DAGSTER_RUN_JOB_NAME": "trace_worker"}
    assert env["TRACE_QUEUE_DRIVER"] == "sqs"
    assert env["TRACE_OBJECT_STORE_URL"] == f"s3://{aws['bucket']}/trace"
    # secrets are references (Secrets Manager ARNs), inherited from the daemon, never values
    assert container["secrets"] == daemon_container["secrets"]
    assert {s["name"] for s in container["secrets"]} == set(SECRETS)
    assert container["logConfiguration"] == daemon_container["logConfiguration"]
    for key in ("executionRoleArn", "taskRoleArn", "networkMode", "requiresCompatibilities"):
        assert registered[key] == daemon[key], key

    # run_task: the run's ECS task, with the command that executes exactly this run.
    run = deploy_instance.get_run_by_id(run_id)
    assert run is not None
    task_arn, cluster = run.tags["ecs/task_arn"], run.tags["ecs/cluster"]
    assert cluster == aws["cluster_arn"]
    (task,) = ecs.describe_tasks(cluster=cluster, tasks=[task_arn], include=["TAGS"])["tasks"]
    assert task["taskDefinitionArn"] == registered["taskDefinitionArn"]
    assert task["launchType"] == "FARGATE"
    (override,) = task["overrides"]["containerOverrides"]
    assert override["name"] == "run"
    assert override["command"][:3] == ["dagster", "api", "execute_run"]
    args = deserialize_value(override["command"][3], ExecuteRunArgs)
    assert args.run_id == run_id
    assert args.job_origin.job_name == "trace_worker"
    assert task["overrides"]["cpu"] == "1024" and task["overrides"]["memory"] == "4096"
    assert task["overrides"]["ephemeralStorage"] == {"sizeInGiB": 50}
    details = {
        d["name"]: d["value"]
        for a in task["attachments"]
        if a["type"] == "ElasticNetworkInterface"
        for d in a["details"]
    }
    assert details["subnetId"] == aws["subnet"]  # the daemon's network, inherited
    tags = {t["key"]: t["value"] for t in task["tags"]}
    assert tags["dagster/run_id"] == run_id
    assert tags["dagster/job_name"] == "trace_worker"
    assert {k: tags[k] for k in ("trace/job", "trace/stream", "trace/range")} == {
        "trace/job": "demo",
        "trace/stream": "blocks",
        "trace/range": "0-1000",
    }
    second = deploy_instance.get_run_by_id(second_run_id)
    assert second is not None and second.tags["ecs/task_arn"] != task_arn

    # Run monitoring sees the task; terminating the run stops it.
    launcher = deploy_instance.run_launcher
    assert launcher.check_run_worker_health(run).status.name == "RUNNING"
    assert launcher.terminate(run_id)
    (stopped,) = ecs.describe_tasks(cluster=cluster, tasks=[task_arn])["tasks"]
    assert stopped["lastStatus"] == "STOPPED"


def test_code_location_container_context_gives_runs_the_worker_role(
    aws: dict[str, Any],
    deploy_instance: DagsterInstance,
    trace_env: Runtime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """deploy/cdk sets DAGSTER_CONTAINER_CONTEXT so the code server reports this
    container context: runs derived from the daemon's task then take the worker role."""
    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget

    worker = "arn:aws:iam::123456789012:role/trace-worker"
    execution = "arn:aws:iam::123456789012:role/trace-execution"
    monkeypatch.setitem(vars(trace_dagster.definitions), "defs", build_definitions(trace_env))
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(
            module_name="trace_dagster.definitions",
            attribute="defs",
            working_directory=str(REPO_ROOT),
        ),
        container_image=IMAGE,
        container_context={"ecs": {"task_role_arn": worker, "execution_role_arn": execution}},
    )
    with WorkspaceProcessContext(
        deploy_instance, InProcessWorkspaceLoadTarget(origin)
    ) as process_context:
        run_id = _launch_worker_run(
            deploy_instance, process_context.create_request_context(), ["x"]
        )
    ecs = aws["ecs"]
    run = deploy_instance.get_run_by_id(run_id)
    assert run is not None
    (task,) = ecs.describe_tasks(cluster=CLUSTER, tasks=[run.tags["ecs/task_arn"]])["tasks"]
    registered = ecs.describe_task_definition(taskDefinition=task["taskDefinitionArn"])
    assert registered["taskDefinition"]["taskRoleArn"] == worker
    assert registered["taskDefinition"]["executionRoleArn"] == execution
    assert aws["daemon_def"]["taskRoleArn"] != worker
