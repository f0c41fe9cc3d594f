"""deploy/ checked statically against the code: the daemon task definition sets only settings
Trace reads, and every variable deploy/dagster.yaml reads."""

from __future__ import annotations

import json
import re
import string
from typing import Any

import yaml

from trace_core.settings import REPO_ROOT, Settings

DEPLOY = REPO_ROOT / "deploy"
TASK_DEFINITION = DEPLOY / "ecs" / "trace-daemon.task-definition.json"
POOL_URL = re.compile(r"^TRACE_RPC_POOL_[A-Z0-9_]+_URL$")


def _container() -> dict[str, Any]:
    text = string.Template(TASK_DEFINITION.read_text()).safe_substitute()
    (container,) = json.loads(text)["containerDefinitions"]
    return dict(container)


def _env_refs(node: Any) -> set[str]:
    """Every ``{env: NAME}`` in a parsed dagster.yaml."""
    if isinstance(node, dict):
        if set(node) == {"env"}:
            return {str(node["env"])}
        return set().union(*(_env_refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_env_refs(v) for v in node))
    return set()


def test_task_definition_sets_only_real_trace_settings() -> None:
    container = _container()
    names = [e["name"] for e in container["environment"]] + [
        s["name"] for s in container["secrets"]
    ]
    assert len(names) == len(set(names)), "a variable is set twice"
    known = {f"TRACE_{name.upper()}" for name in Settings.model_fields}
    unknown = [
        n for n in names if n.startswith("TRACE_") and n not in known and not POOL_URL.match(n)
    ]
    assert unknown == []
    env = {e["name"]: e["value"] for e in container["environment"]}
    assert env["TRACE_QUEUE_DRIVER"] == "sqs"
    assert env["TRACE_CRYO_MODE"] == "real"  # never fake data in a deployment
    assert env["TRACE_OBJECT_STORE_URL"].startswith("s3://")
    assert env["DAGSTER_HOME"] == "/opt/dagster/aws"
    # connection strings and keys are secrets (ARNs), never plain environment values
    secrets = {s["name"] for s in container["secrets"]}
    assert {"TRACE_DATABASE_URL", "DAGSTER_PG_URL", "TRACE_JWT_KEYS"} <= secrets
    credentials = {"TRACE_DATABASE_URL", "TRACE_STATE_URL", "TRACE_DATA_URL", "DAGSTER_PG_URL"}
    plain = [n for n in env if n in credentials | {"TRACE_JWT_KEYS"} or POOL_URL.match(n)]
    assert plain == []


def test_task_definition_provides_what_dagster_yaml_reads() -> None:
    config = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    assert config["run_launcher"]["class"] == "EcsRunLauncher"
    assert "postgres" in config["storage"]
    container = _container()
    provided = {e["name"] for e in container["environment"]} | {
        s["name"] for s in container["secrets"]
    }
    assert _env_refs(config) <= provided


def test_the_image_carries_the_aws_instance_config() -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert "COPY deploy/dagster.yaml /opt/dagster/aws/dagster.yaml" in dockerfile


def test_shipped_dagster_postgres_urls_name_psycopg2() -> None:
    """SQLAlchemy 2.1 maps postgresql:// to psycopg 3, on which dagster-postgres's NOTIFY fails
    (seen in tests/e2e/test_multi_machine.py before the URL named psycopg2)."""
    compose = yaml.safe_load((REPO_ROOT / "compose.yaml").read_text())
    envs = [compose["x-trace-env"]] + [
        svc["environment"]
        for svc in compose["services"].values()
        if isinstance(svc.get("environment"), dict)
    ]
    urls = [str(env["DAGSTER_PG_URL"]) for env in envs if "DAGSTER_PG_URL" in env]
    assert urls and all(u.startswith("postgresql+psycopg2://") for u in urls), urls


def test_shipped_profiles_extract_real_data_only() -> None:
    """compose and the image say TRACE_CRYO_MODE=real (also the default): no profile can fill
    a stream with fake data because a URL is missing."""
    compose = yaml.safe_load((REPO_ROOT / "compose.yaml").read_text())
    assert compose["x-trace-env"]["TRACE_CRYO_MODE"] == "real"
    assert "TRACE_CRYO_MODE=real" in (REPO_ROOT / "Dockerfile").read_text()
