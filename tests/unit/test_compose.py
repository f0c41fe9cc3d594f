"""compose.yaml and the Dockerfile, checked statically against the code (no Docker here).

Every check is a function of a ``Deployment`` (the two files' text, parsed) returning a list of
problems, each naming the offending token. The positive tests run each check on the real files;
the negative tests feed mutated copies through the very same checks.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import sys
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import import_module
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from packaging.specifiers import SpecifierSet

from trace_core.settings import REPO_ROOT, Settings, rpc_pool_env_var

COMPOSE_FILE = REPO_ROOT / "compose.yaml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
VENV_BIN = Path(sys.executable).parent

# The click object behind each console script that compose or the Dockerfile may run.
CLICK_ROOTS = {
    "trace-lite": "trace_lite.cli:cli",
    "dagster": "dagster._cli:cli",
    "dagster-webserver": "dagster_webserver.cli:dagster_webserver",
    "dagster-daemon": "dagster._daemon.cli:cli",
}
# Commands the base image itself provides (checked against the Dockerfile's FROM).
BASE_IMAGE_COMMANDS = {"python:": {"python", "pip"}}

# A role is what compose must provide; a service fills it by what it runs, not by its name.
ROLES: dict[str, Callable[[dict[str, Any]], bool]] = {
    "postgres": lambda s: str(s.get("image", "")).startswith("postgres:"),
    "minio": lambda s: str(s.get("image", "")).startswith("minio/minio"),
    "bucket bootstrap": lambda s: (
        "mc mb" in " ".join(argv(s.get("entrypoint")) + argv(s.get("command")))
    ),
    "migrations": lambda s: argv(s.get("command"))[:2] == ["trace-lite", "migrate"],
    "dagster webserver": lambda s: argv(s.get("command"))[:1] == ["dagster-webserver"],
    "dagster daemon": lambda s: argv(s.get("command"))[:2] == ["dagster-daemon", "run"],
    "query service": lambda s: argv(s.get("command"))[:2] == ["trace-lite", "query-service"],
}
HEALTHY = "service_healthy"
COMPLETED = "service_completed_successfully"
CONDITIONS = {"service_started", HEALTHY, COMPLETED}
FILE_ARG = re.compile(r"^[\w./-]+\.(?:ya?ml|py|sql|json|toml)$")
HEALTH_URL = re.compile(r"http://127\.0\.0\.1:(\d+)/")


# --- parsing --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str
    args: str


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined; comments and blank lines dropped."""
    out: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if not pending:
            start = number
        pending.append(line.removesuffix("\\").strip())
        if not line.endswith("\\"):
            keyword, _, args = " ".join(pending).partition(" ")
            out.append(Instruction(start, keyword.upper(), args.strip()))
            pending = []
    return out


def argv(value: Any) -> list[str]:
    """A compose command/entrypoint or Dockerfile CMD as argv (exec form or shell words)."""
    if value is None:
        return []
    if isinstance(value, list):
        return [str(v) for v in value]
    text = str(value).strip()
    if text.startswith("["):
        return [str(v) for v in json.loads(text)]
    return shlex.split(text)


@dataclass(frozen=True)
class Deployment:
    compose_text: str
    compose: dict[str, Any]
    dockerfile: list[Instruction]

    @classmethod
    def of(cls, compose_text: str, dockerfile_text: str) -> Deployment:
        return cls(compose_text, yaml.safe_load(compose_text), parse_dockerfile(dockerfile_text))

    @property
    def services(self) -> dict[str, dict[str, Any]]:
        services: dict[str, dict[str, Any]] = self.compose.get("services") or {}
        return services

    def role(self, role: str) -> str | None:
        return next((n for n, s in self.services.items() if ROLES[role](s)), None)

    def trace_image_services(self) -> dict[str, dict[str, Any]]:
        """Services running the image this repo's Dockerfile builds."""
        built = {s.get("image") for s in self.services.values() if "build" in s}
        return {n: s for n, s in self.services.items() if "build" in s or s.get("image") in built}

    def docker_env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for ins in self.dockerfile:
            if ins.keyword == "ENV":
                for word in shlex.split(ins.args):
                    name, _, value = word.partition("=")
                    env[name] = value
        return env

    def image_files(self) -> dict[str, Path]:
        """Absolute path in the image -> repo path, for every COPY from the build context."""
        env, workdir, files = self.docker_env(), "/", {}
        for ins in self.dockerfile:
            if ins.keyword == "WORKDIR":
                workdir = str(Path(workdir, ins.args))
            elif ins.keyword in {"COPY", "ADD"} and "--from=" not in ins.args:
                *sources, dest = [w for w in shlex.split(ins.args) if not w.startswith("--")]
                dest = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m[1], ""), dest)
                target = Path(workdir, dest)
                for src in sources:
                    into_dir = dest.endswith("/") or dest in {".", "./"} or len(sources) > 1
                    files[str(target / Path(src).name if into_dir else target)] = REPO_ROOT / src
        return files

    def image_source(self, path: str) -> Path | None:
        """The repo file that ends up at ``path`` in the image (relative to WORKDIR), if any."""
        workdir = next((i.args for i in reversed(self.dockerfile) if i.keyword == "WORKDIR"), "/")
        wanted = Path(workdir, path)
        for image_path, repo_path in self.image_files().items():
            if wanted == Path(image_path):
                return repo_path
            if wanted.is_relative_to(image_path) and repo_path.is_dir():
                return repo_path / wanted.relative_to(image_path)
        return None

    def instance_yaml(self) -> Path | None:
        """The repo file the image installs as $DAGSTER_HOME/dagster.yaml."""
        home = self.docker_env().get("DAGSTER_HOME")
        return self.image_files().get(f"{home}/dagster.yaml") if home else None


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def dependencies(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {n: (d or {}).get("condition", "service_started") for n, d in deps.items()}


def healthcheck_argv(service: dict[str, Any]) -> list[str]:
    test = argv((service.get("healthcheck") or {}).get("test"))
    return test[1:] if test[:1] == ["CMD"] else []


def env_refs(node: Any) -> Iterator[str]:
    """Names in a Dagster instance yaml's ``{env: NAME}`` values."""
    if isinstance(node, dict):
        if set(node) == {"env"}:
            yield str(node["env"])
        for value in node.values():
            yield from env_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from env_refs(value)


def waits_for(d: Deployment, start: str) -> dict[str, set[str]]:
    """Every service ``start`` waits for, transitively, with the conditions of edges into it."""
    seen: dict[str, set[str]] = {}
    todo = [start]
    while todo:
        for dep, condition in dependencies(d.services.get(todo.pop(), {})).items():
            if dep not in seen:
                todo.append(dep)
            seen.setdefault(dep, set()).add(condition)
    return seen


# --- commands -------------------------------------------------------------------------------


def click_problem(root: click.Command, args: list[str], prog: str) -> str | None:
    """Parse ``args`` the way ``prog`` would, without running it; None if click accepts them
    (``--help``/``--version`` included). Group options must be flags: the first non-option
    word names the subcommand."""
    cmd: click.Command = root
    ctx: click.Context | None = None
    path = prog
    try:
        # Relative paths as the image's WORKDIR holds them; --help text is not wanted here.
        with contextlib.chdir(REPO_ROOT), contextlib.redirect_stdout(io.StringIO()):
            while isinstance(cmd, click.Group):
                i = next((i for i, a in enumerate(args) if not a.startswith("-")), len(args))
                if not args:
                    return f"`{path}` names no subcommand"
                ctx = cmd.make_context(path, args[: i + 1], parent=ctx)
                if i == len(args):
                    return f"`{path} {' '.join(args)}` names no subcommand"
                sub = cmd.get_command(ctx, args[i])
                if sub is None:
                    known = ", ".join(sorted(cmd.list_commands(ctx)))
                    return f"`{path} {args[i]}`: no such command (known: {known})"
                cmd, path, args = sub, f"{path} {args[i]}", args[i + 1 :]
            cmd.make_context(path, list(args), parent=ctx)
    except click.exceptions.Exit as exc:
        return None if exc.exit_code == 0 else f"`{path} {' '.join(args)}` exits {exc.exit_code}"
    except click.ClickException as exc:
        return f"`{path} {' '.join(args)}`: {exc.format_message()}"
    return None


def command_problem(d: Deployment, words: list[str]) -> str | None:
    """None if ``words`` runs in the Trace image: a base-image tool or a valid console script."""
    if not words:
        return "empty command"
    name = words[0]
    base = next((i.args for i in d.dockerfile if i.keyword == "FROM"), "")
    if any(base.startswith(p) and name in tools for p, tools in BASE_IMAGE_COMMANDS.items()):
        return None
    scripts = {ep.name: ep for ep in entry_points(group="console_scripts")}
    if name not in scripts or not (VENV_BIN / name).exists():
        return f"`{name}`: no such console script in the venv"
    if name not in CLICK_ROOTS:
        return f"`{name}`: a console script this test cannot check (add it to CLICK_ROOTS)"
    module, _, attr = CLICK_ROOTS[name].partition(":")
    if scripts[name].module != module:
        return f"`{name}` now comes from {scripts[name].value}; update CLICK_ROOTS"
    return click_problem(getattr(import_module(module), attr), words[1:], name)


# --- compose checks -------------------------------------------------------------------------


def check_roles(d: Deployment) -> list[str]:
    return [f"no {role} service" for role in ROLES if d.role(role) is None]


def check_healthchecks(d: Deployment) -> list[str]:
    problems = []
    for name, svc in d.services.items():
        restart = svc.get("restart")
        if restart is None:
            problems.append(f'{name}: no restart policy ("no" for one-shot jobs)')
        elif restart != "no" and not (svc.get("healthcheck") or {}).get("test"):
            problems.append(f"{name}: long-running (restart: {restart}) but no healthcheck")
    return problems


def check_depends_on(d: Deployment) -> list[str]:
    problems, svcs = [], d.services
    for name, svc in svcs.items():
        for dep, condition in dependencies(svc).items():
            if dep not in svcs:
                problems.append(f"{name} depends on {dep}: no such service")
            elif condition not in CONDITIONS:
                problems.append(f"{name} -> {dep}: unknown condition {condition}")
            elif condition == HEALTHY and "healthcheck" not in svcs[dep]:
                problems.append(f"{name} waits for {dep} {HEALTHY}, which has no healthcheck")
            elif condition == COMPLETED and svcs[dep].get("restart") != "no":
                problems.append(f"{name} waits for {dep} to complete, which is not one-shot")
        if name in waits_for(d, name):
            problems.append(f"{name}: depends_on cycle")
    role = {r: d.role(r) for r in ROLES}
    required = [("migrations", "postgres", HEALTHY), ("bucket bootstrap", "minio", HEALTHY)]
    for user in ("dagster webserver", "dagster daemon", "query service"):
        required += [(user, "migrations", COMPLETED), (user, "bucket bootstrap", COMPLETED)]
    for user, needed, condition in required:
        a, b = role[user], role[needed]
        if a and b and dependencies(svcs[a]).get(b) != condition:
            problems.append(f"{a} ({user}) must wait for {b} ({needed}): {condition}")
    # Whoever connects to Postgres reaches it only through service_healthy edges.
    pg = role["postgres"]
    for name, svc in svcs.items():
        if pg and name != pg and any(f"@{pg}:" in v for v in environment(svc).values()):
            conditions = waits_for(d, name).get(pg)
            if conditions != {HEALTHY}:
                problems.append(f"{name} uses {pg} but waits for it with {conditions}")
    return problems


def check_trace_variables(d: Deployment) -> list[str]:
    prefix = Settings.model_config.get("env_prefix", "")
    fields = {f"{prefix}{name}".upper() for name in Settings.model_fields}
    problems = []
    for var in sorted(set(re.findall(r"\bTRACE_[A-Z0-9_]+\b", d.compose_text))):
        pool = re.fullmatch(r"TRACE_RPC_POOL_([A-Z0-9_]+)_URL", var)
        if var in fields or (pool and rpc_pool_env_var(pool[1].lower()) == var):
            continue
        problems.append(f"{var} is not a Settings field nor an RPC pool URL variable")
    return problems


def check_dagster_variables(d: Deployment) -> list[str]:
    instance = d.instance_yaml()
    if instance is None or not instance.exists():
        return [f"the image installs no $DAGSTER_HOME/dagster.yaml from the repo ({instance})"]
    read = set(env_refs(yaml.safe_load(instance.read_text()))) | set(d.docker_env())
    problems = []
    for name, svc in d.services.items():
        for var in environment(svc):
            if var.startswith("DAGSTER_") and var not in read:
                problems.append(
                    f"{name} sets {var}, read neither by {instance.name} nor the Dockerfile"
                )
    for name, svc in d.trace_image_services().items():
        if argv(svc.get("command"))[:1] in (["dagster-webserver"], ["dagster-daemon"]):
            for var in sorted(set(env_refs(yaml.safe_load(instance.read_text())))):
                if var not in environment(svc):
                    problems.append(f"{name} does not set {var}, which {instance.name} reads")
    return problems


def check_commands(d: Deployment) -> list[str]:
    problems = []
    for name, svc in d.trace_image_services().items():
        for words in (
            argv(svc.get("entrypoint")) + argv(svc.get("command")),
            healthcheck_argv(svc),
        ):
            if words and (problem := command_problem(d, words)):
                problems.append(f"{name}: {problem}")
    return problems


def check_command_files(d: Deployment) -> list[str]:
    """Files named on Trace-image command lines exist in the repo and are copied into the image."""
    problems = []
    for name, svc in d.trace_image_services().items():
        for word in argv(svc.get("command")):
            if FILE_ARG.match(word) and not word.startswith("/"):
                source = d.image_source(word)
                if source is None or not source.exists():
                    problems.append(f"{name}: {word} is not copied into the image from the repo")
    return problems


def check_mounts(d: Deployment) -> list[str]:
    problems, named = [], set(d.compose.get("volumes") or {})
    for name, svc in d.services.items():
        context = svc.get("build")
        if context is not None:
            context = context if isinstance(context, str) else context.get("context", ".")
            if not (REPO_ROOT / context / "Dockerfile").is_file():
                problems.append(f"{name}: build context {context} has no Dockerfile")
        for volume in svc.get("volumes") or []:
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith("."):
                path = (REPO_ROOT / source).resolve()
                if not path.is_relative_to(REPO_ROOT) or not path.exists():
                    problems.append(f"{name}: mounts {source}, which is not in the repo")
            elif source.startswith("/"):
                problems.append(f"{name}: mounts the host path {source}")
            elif source not in named:
                problems.append(f"{name}: volume {source} is not declared under volumes:")
    return problems


def check_ports(d: Deployment) -> list[str]:
    """Each HTTP service listens, publishes and is health-checked on one port."""
    problems, svcs = [], d.services
    listening: dict[str, str] = {}
    if web := d.role("dagster webserver"):
        words = argv(svcs[web].get("command"))
        flags = [i for i, w in enumerate(words) if w in {"-p", "--port"}]
        listening[web] = words[flags[0] + 1] if flags else "3000"
    if query := d.role("query service"):
        env = environment(svcs[query])
        listening[query] = env.get(
            "TRACE_QUERY_PORT", str(Settings.model_fields["query_port"].default)
        )
        for other_name, other in d.trace_image_services().items():
            url = environment(other).get("TRACE_QUERY_URL")
            if url and url != f"http://{query}:{listening[query]}":
                problems.append(
                    f"{other_name}: TRACE_QUERY_URL {url} is not http://{query}:{listening[query]}"
                )
    for name, port in listening.items():
        health = HEALTH_URL.findall(" ".join(healthcheck_argv(svcs[name])))
        if health != [port]:
            problems.append(f"{name} listens on {port} but its healthcheck probes {health}")
        published = [str(p).split(":")[-1] for p in svcs[name].get("ports") or []]
        if published and published != [port]:
            problems.append(f"{name} listens on {port} but publishes container port(s) {published}")
    return problems


COMPOSE_CHECKS = [
    check_roles,
    check_healthchecks,
    check_depends_on,
    check_trace_variables,
    check_dagster_variables,
    check_commands,
    check_command_files,
    check_mounts,
    check_ports,
]


# --- Dockerfile checks ----------------------------------------------------------------------


def check_dockerfile_copies(d: Deployment) -> list[str]:
    problems = []
    for ins in d.dockerfile:
        if ins.keyword in {"COPY", "ADD"} and "--from=" not in ins.args:
            *sources, _ = [w for w in shlex.split(ins.args) if not w.startswith("--")]
            for src in sources:
                if not any(REPO_ROOT.glob(src)):
                    problems.append(f"Dockerfile line {ins.line}: COPY source {src} does not exist")
    return problems


def check_dockerfile_command(d: Deployment) -> list[str]:
    last = {i.keyword: argv(i.args) for i in d.dockerfile if i.keyword in {"CMD", "ENTRYPOINT"}}
    words = last.get("ENTRYPOINT", []) + last.get("CMD", [])
    if not words:
        return ["Dockerfile: no CMD or ENTRYPOINT"]
    problem = command_problem(d, words)
    return [f"Dockerfile CMD/ENTRYPOINT: {problem}"] if problem else []


def check_dockerfile_python(d: Deployment) -> list[str]:
    base = next((i.args for i in d.dockerfile if i.keyword == "FROM"), "")
    version = re.match(r"python:(\d+\.\d+)", base)
    requires = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"][
        "requires-python"
    ]
    if version is None or f"{version[1]}.0" not in SpecifierSet(requires):
        return [f"Dockerfile FROM {base} does not satisfy requires-python {requires}"]
    return []


DOCKERFILE_CHECKS = [check_dockerfile_copies, check_dockerfile_command, check_dockerfile_python]


def all_problems(d: Deployment) -> list[str]:
    return [p for check in COMPOSE_CHECKS + DOCKERFILE_CHECKS for p in check(d)]


# --- tests ----------------------------------------------------------------------------------


def assert_clean(problems: list[str]) -> None:
    assert not problems, "\n".join(["compose.yaml/Dockerfile disagree with the code:", *problems])


@pytest.fixture(scope="module")
def deployment() -> Deployment:
    return Deployment.of(COMPOSE_FILE.read_text(), DOCKERFILE.read_text())


def test_compose_has_every_service_role(deployment: Deployment) -> None:
    assert_clean(check_roles(deployment))


def test_long_running_services_have_healthchecks(deployment: Deployment) -> None:
    assert_clean(check_healthchecks(deployment))


def test_depends_on_orders_postgres_migrations_then_services(deployment: Deployment) -> None:
    assert_clean(check_depends_on(deployment))


def test_trace_variables_are_settings_fields(deployment: Deployment) -> None:
    assert_clean(check_trace_variables(deployment))


def test_dagster_variables_are_read_by_the_instance_yaml(deployment: Deployment) -> None:
    assert_clean(check_dagster_variables(deployment))


def test_commands_exist_and_parse(deployment: Deployment) -> None:
    assert_clean(check_commands(deployment))


def test_command_files_are_in_the_image(deployment: Deployment) -> None:
    assert_clean(check_command_files(deployment))


def test_mounted_files_and_volumes_exist(deployment: Deployment) -> None:
    assert_clean(check_mounts(deployment))


def test_ports_agree(deployment: Deployment) -> None:
    assert_clean(check_ports(deployment))


def test_dockerfile_copies_exist(deployment: Deployment) -> None:
    assert_clean(check_dockerfile_copies(deployment))


def test_dockerfile_command_exists(deployment: Deployment) -> None:
    assert_clean(check_dockerfile_command(deployment))


def test_dockerfile_python_matches_pyproject(deployment: Deployment) -> None:
    assert_clean(check_dockerfile_python(deployment))


def test_checks_see_what_they_check(deployment: Deployment) -> None:
    """The checks have something to bite on: roles resolve, instance yaml and commands found."""
    assert {r: deployment.role(r) for r in ROLES} == {
        "postgres": "postgres",
        "minio": "minio",
        "bucket bootstrap": "minio-setup",
        "migrations": "migrate",
        "dagster webserver": "dagster-webserver",
        "dagster daemon": "dagster-daemon",
        "query service": "query",
    }
    assert deployment.instance_yaml() == REPO_ROOT / "dagster_home" / "dagster.postgres.yaml"
    assert deployment.image_source("workspace.yaml") == REPO_ROOT / "workspace.yaml"


COMPOSE_MUTATIONS = [
    ("TRACE_QUERY_PORT", "TRACE_QUERY_PROT", "TRACE_QUERY_PROT"),
    ("TRACE_RPC_POOL_DEMO_URL:", "TRACE_RPC_POOL_DEMO_URI:", "TRACE_RPC_POOL_DEMO_URI"),
    ('["trace-lite", "migrate"]', '["trace-lite", "migrat"]', "migrat"),
    ('"trace-lite", "query-service"', '"trace-lite", "query-servic"', "query-servic"),
    ('"dagster-webserver", "-h"', '"dagster-webservr", "-h"', "dagster-webservr"),
    ('"-p", "3000"', '"--prot", "3000"', "--prot"),
    ('"liveness-check"', '"liveness-chek"', "liveness-chek"),
    ('"workspace.yaml"]', '"workspace.yml"]', "workspace.yml"),
    ("DAGSTER_PG_URL:", "DAGSTER_PG_URI:", "DAGSTER_PG_URI"),
    ("./deploy/postgres-init.sql", "./deploy/postgres-init.sq", "postgres-init.sq"),
    ("- miniodata:/data", "- minio-data:/data", "minio-data"),
    ("urlopen('http://127.0.0.1:8090/healthz')", "urlopen('http://127.0.0.1:8091/healthz')", "8091"),
    ("TRACE_QUERY_URL: http://query:8090", "TRACE_QUERY_URL: http://query:9090", "9090"),
    ('    healthcheck:\n      test: ["CMD", "dagster-daemon", "liveness-check"]\n', "    x-no-healthcheck:\n",
     "dagster-daemon: long-running (restart: unless-stopped) but no healthcheck"),
    ('  migrate:\n    <<: *trace-service\n    restart: "no"',
     "  migrate:\n    <<: *trace-service\n    restart: unless-stopped", "which is not one-shot"),
    ("    depends_on:\n      postgres:\n        condition: service_healthy",
     "    depends_on:\n      postgres:\n        condition: service_started", "service_healthy"),
    ("image: postgres:16", "image: mysql:8", "no postgres service"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("old", "new", "expected"), COMPOSE_MUTATIONS, ids=[m[2][:40] for m in COMPOSE_MUTATIONS]
)
def test_compose_mutation_is_caught(old: str, new: str, expected: str) -> None:
    text = COMPOSE_FILE.read_text()
    assert old in text, f"mutation target {old!r} vanished from compose.yaml; update the test"
    problems = all_problems(Deployment.of(text.replace(old, new, 1), DOCKERFILE.read_text()))
    assert any(expected in p for p in problems), problems


DOCKERFILE_MUTATIONS = [
    ("COPY workspace.yaml ./", "COPY workspace.yml ./", "workspace.yml"),
    ("COPY examples ./examples", "COPY example ./examples", "example"),
    ('CMD ["trace-lite", "--help"]', 'CMD ["trace-lit", "--help"]', "trace-lit"),
    ('CMD ["trace-lite", "--help"]', 'CMD ["trace-lite", "--halp"]', "--halp"),
    ("FROM python:3.11-slim", "FROM python:3.12-slim", "requires-python"),
    ("COPY dagster_home/dagster.postgres.yaml $DAGSTER_HOME/dagster.yaml",
     "COPY dagster_home/dagster.postgres.yaml $DAGSTER_HOME/instance.yaml", "dagster.yaml"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("old", "new", "expected"), DOCKERFILE_MUTATIONS, ids=[m[1] for m in DOCKERFILE_MUTATIONS]
)
def test_dockerfile_mutation_is_caught(old: str, new: str, expected: str) -> None:
    text = DOCKERFILE.read_text()
    assert old in text, f"mutation target {old!r} vanished from the Dockerfile; update the test"
    problems = all_problems(Deployment.of(COMPOSE_FILE.read_text(), text.replace(old, new, 1)))
    assert any(expected in p for p in problems), problems


def test_dockerfile_parser_joins_continuations() -> None:
    parsed = parse_dockerfile('# c\nFROM x\n\nRUN a \\\n  && b\nCMD ["y"]\n')
    assert parsed == [
        Instruction(2, "FROM", "x"),
        Instruction(4, "RUN", "a && b"),
        Instruction(6, "CMD", '["y"]'),
    ]
