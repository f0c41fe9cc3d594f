"""The stack's settings, read from CDK context (``cdk.json`` or ``-c key=value``) and validated.

Pure: no aws_cdk import, so a bad value fails before any construct exists, with the key named.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

PREFIX = "trace:"

# db.<family>.<size>: the burstable and general-purpose classes RDS Postgres offers.
_INSTANCE_CLASS = re.compile(
    r"^(t3|t4g|m5|m6g|m6i|m7g|r5|r6g|r6i|r7g)\.(micro|small|medium|large|xlarge|[1-9][0-9]?xlarge)$"
)
_FARGATE_CPU = (256, 512, 1024, 2048, 4096, 8192, 16384)
# CloudWatch Logs accepts only these retention periods (days).
_LOG_RETENTION_DAYS = (
    1,
    3,
    5,
    7,
    14,
    30,
    60,
    90,
    120,
    150,
    180,
    365,
    400,
    545,
    731,
    1096,
    1827,
    2192,
    2557,
    2922,
    3288,
    3653,
)
_NAME = re.compile(r"^[a-z][a-z0-9-]{1,30}$")


class ContextError(ValueError):
    """A CDK context value is invalid; the message names the key, the value and what is allowed."""


@dataclass(frozen=True)
class StackConfig:
    name: str = "trace"
    image: str = "public.ecr.aws/trace/trace:latest"
    max_azs: int = 2
    nat_gateways: int = 1
    db_instance_class: str = "t4g.medium"
    db_allocated_storage_gb: int = 100
    db_multi_az: bool = False
    log_retention_days: int = 30
    staging_expire_days: int = 7
    results_expire_days: int = 7
    scratch_expire_days: int = 3
    noncurrent_expire_days: int = 30
    queue_visibility_seconds: int = 300
    queue_max_receive_count: int = 5
    queue_retention_days: int = 4
    dlq_retention_days: int = 14
    run_cpu: int = 1024
    run_memory_mib: int = 4096
    max_concurrent_runs: int = 8

    @classmethod
    def from_context(cls, get: Callable[[str], Any]) -> StackConfig:
        """Build from ``get(key)`` (``app.node.try_get_context``); raises ``ContextError``."""
        values: dict[str, Any] = {}
        for field, default in cls.__dataclass_fields__.items():
            key = context_key(field)
            raw = get(key)
            if raw is None:
                continue
            values[field] = _coerce(key, raw, type(default.default))
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        _check(
            _NAME.match(self.name) is not None,
            "name",
            self.name,
            "lowercase letters, digits and '-', 2-31 characters, starting with a letter",
        )
        _check(bool(self.image.strip()), "image", self.image, "a container image reference")
        _check(1 <= self.max_azs <= 6, "maxAzs", self.max_azs, "1 to 6")
        _check(
            0 <= self.nat_gateways <= self.max_azs,
            "natGateways",
            self.nat_gateways,
            f"0 to maxAzs ({self.max_azs})",
        )
        _check(
            _INSTANCE_CLASS.match(self.db_instance_class) is not None,
            "dbInstanceClass",
            self.db_instance_class,
            "an RDS class like t4g.medium or r6g.xlarge (without the 'db.' prefix)",
        )
        _check(
            20 <= self.db_allocated_storage_gb <= 65536,
            "dbAllocatedStorageGb",
            self.db_allocated_storage_gb,
            "20 to 65536",
        )
        _check(
            self.log_retention_days in _LOG_RETENTION_DAYS,
            "logRetentionDays",
            self.log_retention_days,
            f"one of CloudWatch's periods {_LOG_RETENTION_DAYS}",
        )
        for field in (
            "staging_expire_days",
            "results_expire_days",
            "scratch_expire_days",
            "noncurrent_expire_days",
        ):
            value = getattr(self, field)
            _check(value >= 1, _camel(field), value, "a whole number of days, at least 1")
        _check(
            0 <= self.queue_visibility_seconds <= 43200,
            "queueVisibilitySeconds",
            self.queue_visibility_seconds,
            "0 to 43200",
        )
        _check(
            1 <= self.queue_max_receive_count <= 1000,
            "queueMaxReceiveCount",
            self.queue_max_receive_count,
            "1 to 1000",
        )
        for field in ("queue_retention_days", "dlq_retention_days"):
            value = getattr(self, field)
            _check(1 <= value <= 14, _camel(field), value, "1 to 14 days (SQS's limit)")
        _check(
            self.run_cpu in _FARGATE_CPU,
            "runCpu",
            self.run_cpu,
            f"a Fargate CPU size {_FARGATE_CPU}",
        )
        _check(
            _fargate_memory_ok(self.run_cpu, self.run_memory_mib),
            "runMemoryMib",
            self.run_memory_mib,
            f"a Fargate memory size for runCpu {self.run_cpu} (2x to 8x the CPU units, in GiB steps)",
        )
        _check(
            1 <= self.max_concurrent_runs <= 1000,
            "maxConcurrentRuns",
            self.max_concurrent_runs,
            "1 to 1000",
        )


def _fargate_memory_ok(cpu: int, memory: int) -> bool:
    if cpu == 256:
        return memory in (512, 1024, 2048)
    return cpu * 2 <= memory <= min(cpu * 8, 122880) and memory % 1024 == 0


def context_key(field: str) -> str:
    return PREFIX + _camel(field)


def _camel(field: str) -> str:
    head, *rest = field.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _check(ok: bool, name: str, value: object, allowed: str) -> None:
    if not ok:
        raise ContextError(f"CDK context {PREFIX}{name}={value!r} is invalid: expected {allowed}")


def _coerce(key: str, raw: Any, kind: type) -> Any:
    """Context from ``-c`` arrives as strings; from cdk.json as JSON values."""
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("true", "false"):
            return raw.lower() == "true"
    elif kind is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and re.fullmatch(r"-?[0-9]+", raw.strip()):
            return int(raw)
    elif kind is str and isinstance(raw, str):
        return raw
    raise ContextError(f"CDK context {key}={raw!r} is invalid: expected {kind.__name__}")


def describe(config: StackConfig) -> Mapping[str, Any]:
    """The effective context, keyed as in cdk.json (for the README and error messages)."""
    return {context_key(f): getattr(config, f) for f in config.__dataclass_fields__}
