"""The stack's compute side: the ECS cluster and internal load balancer, least-privilege task
roles with their grants, and the Fargate task definitions that run under them (with the
daemon's launcher grants on them)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import aws_cdk as cdk
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam

from trace_cdk.names import (
    BATCHES,
    BUNDLES,
    COMPUTE_LOGS,
    QUERY_PORT,
    RESULTS,
    STAGING,
    STORE_PREFIX,
    VERSIONS,
    WEB_PORT,
)

if TYPE_CHECKING:
    from trace_cdk.stack import TraceStack


def add_roles(stack: TraceStack) -> None:
    """The cluster, the internal load balancer and the least-privilege task roles."""
    name = stack.config.name
    stack.cluster = ecs.Cluster(
        stack,
        "Cluster",
        vpc=stack.vpc,
        cluster_name=name,
        container_insights_v2=ecs.ContainerInsights.ENABLED,
    )
    # An internal load balancer in the private subnets: the webserver (3000) for operators
    # on the VPN/bastion, the Query Service (8090) for clients and the runs' TRACE_QUERY_URL.
    stack.alb = elbv2.ApplicationLoadBalancer(
        stack,
        "InternalAlb",
        vpc=stack.vpc,
        internet_facing=False,
        vpc_subnets=stack.app_subnets,
        security_group=stack.app_sg,
    )
    stack.execution_role = iam.Role(
        stack,
        "ExecutionRole",
        assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
        description="Pull the image, read the secrets, write the log groups",
    )
    # The role ECS uses to pull and start; grants are added by the secrets/log wiring below.
    stack.worker_role = task_role(stack, "WorkerRole", "Runs: staging and version prefixes")
    stack.daemon_role = task_role(stack, "DaemonRole", "Dagster daemon: launches runs")
    stack.web_role = task_role(stack, "WebRole", "Dagster webserver: reads run logs")
    stack.query_role = task_role(stack, "QueryRole", "Query Service: reads datasets")
    queue_arns = [q.queue_arn for q in [*stack.queues.values(), *stack.dlqs.values()]]

    # Workers: read and write only the dataset bucket's staging and version prefixes.
    stack.worker_role.add_to_policy(
        iam.PolicyStatement(
            actions=["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
            resources=[stack.datasets.arn_for_objects(f"{p}*") for p in (STAGING, VERSIONS)],
        )
    )
    stack.worker_role.add_to_policy(
        iam.PolicyStatement(
            actions=["s3:ListBucket"],
            resources=[stack.datasets.bucket_arn],
            conditions={"StringLike": {"s3:prefix": [f"{STAGING}*", f"{VERSIONS}*"]}},
        )
    )
    # Runs also read UDF bundles (transforms, Python alerts) and the sink service runs
    # stage, read and drop their batches; nothing else.
    stack.worker_role.add_to_policy(
        iam.PolicyStatement(
            actions=["s3:GetObject"], resources=[stack.datasets.arn_for_objects(f"{BUNDLES}*")]
        )
    )
    stack.worker_role.add_to_policy(
        iam.PolicyStatement(
            actions=["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
            resources=[stack.datasets.arn_for_objects(f"{BATCHES}*")],
        )
    )
    # The Credential Broker (TRACE_WORKER_S3_ROLE_ARN, docs/api.md): each claimed attempt
    # assumes this role with a session policy narrowing it to its own inputs' versions
    # (read) and its own staging prefix (write); the role itself allows no more than that.
    stack.attempt_role = iam.Role(
        stack,
        "AttemptRole",
        assumed_by=iam.ArnPrincipal(stack.worker_role.role_arn),
        description="Credential Broker: one attempt's inputs (read) and staging (write)",
        max_session_duration=cdk.Duration.hours(1),
    )
    stack.attempt_role.add_to_policy(
        iam.PolicyStatement(
            actions=["s3:GetObject"], resources=[stack.datasets.arn_for_objects(f"{VERSIONS}*")]
        )
    )
    stack.attempt_role.add_to_policy(
        iam.PolicyStatement(
            actions=["s3:PutObject", "s3:AbortMultipartUpload"],
            resources=[stack.datasets.arn_for_objects(f"{STAGING}*")],
        )
    )
    stack.attempt_role.grant_assume_role(stack.worker_role)
    # Every process writes its own Dagster compute logs (stdout/stderr) to scratch.
    for role in (stack.worker_role, stack.daemon_role):
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["s3:PutObject", "s3:GetObject"],
                resources=[stack.scratch.arn_for_objects(f"{COMPUTE_LOGS}*")],
            )
        )
    stack.web_role.add_to_policy(
        iam.PolicyStatement(
            actions=["s3:GetObject"],
            resources=[stack.scratch.arn_for_objects(f"{COMPUTE_LOGS}*")],
        )
    )
    queue_actions = [
        "sqs:SendMessage",
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:ChangeMessageVisibility",
        "sqs:GetQueueAttributes",
        "sqs:GetQueueUrl",
    ]
    for role in (stack.worker_role, stack.daemon_role):
        role.add_to_policy(iam.PolicyStatement(actions=queue_actions, resources=queue_arns))
    # The Query Service reads committed versions and writes query exports: today under
    # trace/results/ in the one object store (TRACE_OBJECT_STORE_URL); the results bucket
    # is ready for a separate results store.
    stack.datasets.grant_read(stack.query_role, f"{VERSIONS}*")
    stack.datasets.grant_read_write(stack.query_role, f"{RESULTS}*")
    stack.results.grant_read_write(stack.query_role)
    # POST /v1/jobs stores a job's UDF code as a bundle
    stack.query_role.add_to_policy(
        iam.PolicyStatement(
            actions=["s3:GetObject", "s3:PutObject"],
            resources=[stack.datasets.arn_for_objects(f"{BUNDLES}*")],
        )
    )
    stack.query_role.add_to_policy(
        iam.PolicyStatement(actions=["sqs:GetQueueAttributes"], resources=queue_arns)
    )
    # GET /metrics reads the queues' ApproximateAgeOfOldestMessage (no resource-level
    # permissions exist for this action).
    stack.query_role.add_to_policy(
        iam.PolicyStatement(actions=["cloudwatch:GetMetricStatistics"], resources=["*"])
    )


def add_task_definitions(stack: TraceStack) -> None:
    """Fargate task definitions, and the daemon's launcher grants on them."""
    config, name = stack.config, stack.config.name
    env = {
        "DAGSTER_HOME": "/opt/dagster/aws",
        "DAGSTER_CURRENT_IMAGE": config.image,
        "DAGSTER_MAX_CONCURRENT_RUNS": str(config.max_concurrent_runs),
        "DAGSTER_COMPUTE_LOGS_BUCKET": stack.scratch.bucket_name,
        "TRACE_HOME": "/tmp/trace",
        "TRACE_LOG_FORMAT": "json",
        "TRACE_AWS_REGION": stack.region,
        "TRACE_QUEUE_DRIVER": "sqs",
        "TRACE_SQS_QUEUE_PREFIX": stack.queue_prefix,
        "TRACE_OBJECT_STORE_URL": f"s3://{stack.datasets.bucket_name}/{STORE_PREFIX}",
        "TRACE_WORKER_S3_ROLE_ARN": stack.attempt_role.role_arn,
        "TRACE_QUERY_URL": f"http://{stack.alb.load_balancer_dns_name}:{QUERY_PORT}",
        # Runs take the worker role, not the daemon's: the launcher derives each run's task
        # definition from the daemon's task, and the code server (spawned by the daemon and
        # the webserver with this environment) reports this ECS container context.
        "DAGSTER_CONTAINER_CONTEXT": cdk.Stack.of(stack).to_json_string(
            {
                "ecs": {
                    "task_role_arn": stack.worker_role.role_arn,
                    "execution_role_arn": stack.execution_role.role_arn,
                }
            }
        ),
    }
    image = ecs.ContainerImage.from_registry(config.image)
    stack.task_definitions = {}

    def task(
        kind: str,
        role: iam.Role,
        command: list[str],
        cpu: int,
        memory: int,
        port: int | None = None,
        extra_env: dict[str, str] | None = None,
        container: str | None = None,
    ) -> ecs.FargateTaskDefinition:
        definition = ecs.FargateTaskDefinition(
            stack,
            f"{kind.capitalize()}Task",
            family=f"{name}-{kind}",
            cpu=cpu,
            memory_limit_mib=memory,
            task_role=role,
            execution_role=stack.execution_role,
            ephemeral_storage_gib=50 if kind == "run" else None,
        )
        definition.add_container(
            container or kind,
            image=image,
            command=command,
            environment={**env, **(extra_env or {})},
            secrets=stack.ecs_secrets,
            memory_reservation_mib=memory // 2,
            port_mappings=[ecs.PortMapping(container_port=port)] if port else None,
            logging=ecs.LogDrivers.aws_logs(stream_prefix=name, log_group=stack.log_groups[kind]),
        )
        stack.task_definitions[kind] = definition
        return definition

    task(
        "webserver",
        stack.web_role,
        ["dagster-webserver", "-h", "0.0.0.0", "-p", str(WEB_PORT), "-w", "workspace.yaml"],
        1024,
        2048,
        WEB_PORT,
        container="dagster-webserver",
    )
    task(
        "daemon",
        stack.daemon_role,
        ["dagster-daemon", "run", "-w", "workspace.yaml"],
        1024,
        2048,
        container="dagster-daemon",
    )
    task(
        "run",
        stack.worker_role,
        ["dagster", "api", "execute_run"],
        config.run_cpu,
        config.run_memory_mib,
    )
    task(
        "query",
        stack.query_role,
        ["trace-lite", "query-service"],
        1024,
        2048,
        QUERY_PORT,
        extra_env={"TRACE_QUERY_HOST": "0.0.0.0"},
        container="query-service",
    )
    # The daemon's launcher: start, watch and stop run tasks in this cluster; register the
    # per-job run task definitions; pass only the run task's roles.
    stack.daemon_role.add_to_policy(
        iam.PolicyStatement(
            actions=[
                "ecs:RunTask",
                "ecs:DescribeTasks",
                "ecs:StopTask",
                "ecs:TagResource",
                "ecs:ListTasks",
            ],
            resources=["*"],
            conditions={"ArnEquals": {"ecs:cluster": stack.cluster.cluster_arn}},
        )
    )
    stack.daemon_role.add_to_policy(
        iam.PolicyStatement(
            actions=[
                "ecs:RegisterTaskDefinition",
                "ecs:DescribeTaskDefinition",
                "ecs:ListTaskDefinitions",
                "ec2:DescribeNetworkInterfaces",
            ],
            resources=["*"],  # these actions support no resource-level permissions
        )
    )
    stack.daemon_role.add_to_policy(
        iam.PolicyStatement(
            actions=["iam:PassRole"],
            resources=[stack.worker_role.role_arn, stack.execution_role.role_arn],
        )
    )
    stack.daemon_role.add_to_policy(
        iam.PolicyStatement(
            actions=["logs:GetLogEvents"], resources=[stack.log_groups["run"].log_group_arn]
        )
    )


def task_role(stack: TraceStack, construct_id: str, description: str) -> iam.Role:
    return iam.Role(
        stack,
        construct_id,
        assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
        description=description,
    )
