"""The import graph of trace_core, trace_dagster and trace_lite: no cycle anywhere, and no
package imports a tier above it (STYLE.md's tier diagram, docs/architecture.md).

Every ``import``/``from ... import`` counts: module level, function-local and
``TYPE_CHECKING`` ones alike (a local import hides an arrow, it does not remove it). An import
resolves to the most specific module of the three packages it names (``from
trace_core.chain_sync import planner`` is an arrow to ``trace_core.chain_sync.planner``).

The tiers, lowest first; a package imports its own tier's peers only along the arrows
``PEER_IMPORTS`` lists (each with its reason), and any lower tier:

- vocabulary: ``errors``, ``settings``, ``logs``, ``profile``, ``yamlfile``.
- adapters: ``db``, ``queue``, ``storage``, ``rpc`` (client, pools, limits).
- state: ``outbox``, ``tasks``, ``runtime``, ``datasets``, ``tenancy``.
- domains: ``udf``, ``hot``, ``operators``, ``chain_sync``, ``query``, ``sinks``,
  ``transforms``, ``sources``, ``alerts``, ``analytics``, ``integrity``.
- engine: ``engine`` (dispatcher, intake, execute, worker runs, idle, registry, services):
  the shell's one doorway.
- api: ``api`` (the HTTP API's routes, mounted on the Query Service app by the entry point):
  above the engine because it drives several domains (jobs, transforms, alerts, sources,
  query) for a remote caller, as the CLI does; below the entry points that mount it.
- entry: ``cli`` (trace_core), ``trace_dagster`` (the Dagster shell), ``trace_lite`` (the local
  stack, demo and dev tools).

The shell (trace_dagster) imports from trace_core only the engine, ``runtime``, ``errors``,
``settings`` and package faces (a package's ``__init__``), never a domain module, and opens no
state or data connection itself (an engine function does).
"""

from __future__ import annotations

import ast
import functools
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("trace_core", "trace_dagster", "trace_lite")

TIERS: list[tuple[str, list[str]]] = [
    ("vocabulary", ["errors", "settings", "logs", "profile", "yamlfile"]),
    ("adapters", ["db", "queue", "storage", "rpc"]),
    ("state", ["outbox", "tasks", "runtime", "datasets", "tenancy"]),
    (
        "domains",
        [
            "udf",
            "hot",
            "operators",
            "chain_sync",
            "query",
            "sinks",
            "transforms",
            "sources",
            "alerts",
            "analytics",
            "integrity",
        ],
    ),
    ("engine", ["engine"]),
    ("api", ["api"]),
    ("entry", ["cli", "trace_dagster", "trace_lite"]),
]
# The only imports between peers of one tier, and why.
PEER_IMPORTS: dict[tuple[str, str], str] = {
    ("settings", "errors"): "invalid settings raise ConfigError",
    ("yamlfile", "errors"): "a bad YAML file raises ConfigError naming file:line",
    ("logs", "errors"): "log fields name error kinds",
    ("queue", "db"): "pgqueue is a queue in Postgres",
    ("rpc", "db"): "per-pool extraction slots live in state (rpc.limits)",
    ("tasks", "outbox"): "create_task writes its wake-up in the task's transaction",
    ("datasets", "outbox"): "a commit announces its version through the outbox",
    ("datasets", "tasks"): "a commit fences the attempt and finishes its task",
    ("runtime", "tasks"): "the runtime carries the retry policy",
    ("operators", "hot"): "block_follower and parquet_compact operate the hot tables",
    ("chain_sync", "operators"): "the planner builds cryo_ingest payloads",
    ("query", "hot"): "federated reads union hot rows",
    ("query", "chain_sync"): "grants name chain_sync streams",
    ("alerts", "chain_sync"): "alerts watch chain_sync streams",
    ("alerts", "operators"): "alert_evaluate is an operator",
    ("alerts", "query"): "alert SQL runs through the query pipeline",
    ("alerts", "sinks"): "alert events are published like sink batches",
    ("analytics", "chain_sync"): "an analytics block is part of a chain_sync job",
    ("analytics", "query"): "analytics reads committed versions as the query engine does",
    ("integrity", "chain_sync"): "integrity verifies chain_sync ranges",
    ("datasets", "runtime"): "retention runs over the runtime's state and store",
    ("transforms", "udf"): "a Python transform runs in the UDF sandbox",
    ("transforms", "chain_sync"): "transform inputs name chain_sync streams",
    ("transforms", "operators"): "udf_transform is an operator",
    ("transforms", "query"): "a transform reads its pinned inputs through the query pipeline",
    ("sources", "transforms"): "a trigger (cron, webhook, manual) creates a transform run",
    ("alerts", "udf"): "a Python alert evaluates in the UDF sandbox",
    ("alerts", "transforms"): "alerts watch transform outputs too",
    ("trace_lite", "cli"): "trace-lite adds its commands to trace_core's CLI",
    ("trace_lite", "trace_dagster"): "trace-lite runs the Dagster definitions locally",
}
# Shell imports of domain modules that landed with epochs, nofake and analytics while the
# engine doorway was built: each is to move behind an engine function; the list may only
# shrink, a new direct import fails the test.
SHELL_EXCEPTIONS: set[tuple[str, str]] = set()
# Shell modules that still open state/data connections themselves (the same ratchet): every
# other one asks an engine function, which opens the connection.
SHELL_CONNECTION_EXCEPTIONS: set[str] = set()
SHELL_MAY_IMPORT = (
    "trace_core.engine",
    "trace_core.runtime",
    "trace_core.errors",
    "trace_core.settings",
    "trace_core.profile",  # instrumentation only: timing the shell's own steps of a run
)


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The most specific existing module of ours ``name`` refers to."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name if name.split(".")[0] in PACKAGES else None


def import_edges(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the modules of ours it imports (anywhere in the file)."""
    edges: dict[str, set[str]] = defaultdict(set)
    for mod, path in modules.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                targets = [f"{stem}.{a.name}" for a in node.names]
            for t in targets:
                got = _resolve(t, modules)
                if got and got != mod:
                    edges[mod].add(got)
    return edges


@functools.cache
def _graph() -> dict[str, set[str]]:
    """The import edges of the three packages, read once per test session."""
    return import_edges(_modules())


def _top(mod: str) -> str:
    """The package a module belongs to: a trace_core subpackage, or trace_dagster/trace_lite."""
    parts = mod.split(".")
    if parts[0] != "trace_core":
        return parts[0]
    return parts[1] if len(parts) > 1 else ""


def _tier(top: str) -> int:
    for i, (_name, members) in enumerate(TIERS):
        if top in members:
            return i
    raise AssertionError(f"{top} is in no tier: add it to TIERS")


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def _package_edges() -> dict[str, set[str]]:
    pkg_edges: dict[str, set[str]] = defaultdict(set)
    for src, dsts in _graph().items():
        for dst in dsts:
            if _top(src) and _top(dst) and _top(src) != _top(dst):
                pkg_edges[_top(src)].add(_top(dst))
    return pkg_edges


def test_every_trace_core_package_has_a_layer() -> None:
    """Every package of the three (trace_core's subpackages, trace_dagster, trace_lite) is in a
    tier."""
    tops = {_top(m) for m in _modules()} - {""}
    for top in tops:
        _tier(top)


def test_no_import_cycle_between_modules() -> None:
    cycles = _cycles(_graph())
    assert not cycles, "\n".join(" <-> ".join(c) for c in cycles)


def test_no_import_cycle_between_packages() -> None:
    cycles = _cycles(_package_edges())
    assert not cycles, "\n".join(" <-> ".join(c) for c in cycles)


def test_no_upward_import_between_packages() -> None:
    """No package imports a tier above its own."""
    upward = sorted(
        f"{src} -> {dst}"
        for src, dsts in _graph().items()
        for dst in dsts
        if _top(src) and _top(dst) and _tier(_top(dst)) > _tier(_top(src))
    )
    assert not upward, "\n".join(upward)


def test_peers_import_each_other_only_where_documented() -> None:
    found = {
        (src, dst)
        for src, dsts in _package_edges().items()
        for dst in dsts
        if _tier(src) == _tier(dst)
    }
    assert sorted(found - set(PEER_IMPORTS)) == []


def test_the_shell_imports_only_the_engine_and_faces() -> None:
    modules = _modules()
    faces = {
        m for m, p in modules.items() if m.startswith("trace_core.") and p.name == "__init__.py"
    }
    bad = sorted(
        (src, dst)
        for src, dsts in _graph().items()
        if src.startswith("trace_dagster")
        for dst in dsts
        if dst.startswith("trace_core")
        and dst not in faces
        and not any(dst == ok or dst.startswith(ok + ".") for ok in SHELL_MAY_IMPORT)
    )
    assert [edge for edge in bad if edge not in SHELL_EXCEPTIONS] == []
    assert sorted(SHELL_EXCEPTIONS - set(bad)) == [], "moved behind the engine: drop from the list"


def _opens_connections(source: str) -> bool:
    """Whether a module calls ``<something>.state()`` or ``<something>.data()`` (a runtime's
    state or data connection), anywhere in it."""
    return any(
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("state", "data")
        for node in ast.walk(ast.parse(source))
    )


def test_the_shell_opens_no_connections() -> None:
    """trace_dagster never opens a state or data connection: an engine function does."""
    opening = sorted(
        str(p.relative_to(ROOT))
        for p in (ROOT / "trace_dagster").rglob("*.py")
        if _opens_connections(p.read_text())
    )
    assert [f for f in opening if f not in SHELL_CONNECTION_EXCEPTIONS] == []
    assert sorted(SHELL_CONNECTION_EXCEPTIONS - set(opening)) == [], "drop from the list"


def test_the_connection_check_sees_a_connection() -> None:
    """The connection rule itself: ``rt.state()`` and ``self.rt.data()`` are caught; reading a
    ``state`` attribute or calling ``state(...)`` unqualified is not a connection."""
    assert _opens_connections("def f(rt):\n    with rt.state() as conn:\n        pass\n")
    assert _opens_connections("def f(self):\n    return self.rt.data()\n")
    assert not _opens_connections("def f(r):\n    return r.state, state()\n")


def test_the_graph_sees_local_and_relative_imports(tmp_path: Path) -> None:
    """The checker itself: a function-local import and a relative one are both arrows."""
    pkg = tmp_path / "trace_core"
    (pkg / "hot").mkdir(parents=True)
    (pkg / "alerts").mkdir()
    for f in ("__init__.py", "hot/__init__.py", "alerts/__init__.py", "alerts/routing.py"):
        (pkg / f).write_text("")
    (pkg / "hot" / "compact.py").write_text(
        "def f():\n    from trace_core.alerts.routing import announce\nfrom . import other\n"
    )
    (pkg / "hot" / "other.py").write_text("from .compact import f\n")
    modules = {_module_name(p, tmp_path): p for p in pkg.rglob("*.py")}
    edges = import_edges(modules)
    assert edges["trace_core.hot.compact"] == {"trace_core.alerts.routing", "trace_core.hot.other"}
    assert _cycles(edges) == [["trace_core.hot.compact", "trace_core.hot.other"]]
    assert _tier("engine") > _tier("alerts") == _tier("hot")
    assert ("hot", "alerts") not in PEER_IMPORTS


def test_the_shell_check_sees_a_domain_import(tmp_path: Path) -> None:
    """The shell rule itself: trace_dagster reaching a domain module is caught."""
    for d in ("trace_core/engine", "trace_core/chain_sync", "trace_dagster"):
        (tmp_path / d).mkdir(parents=True)
    for f in (
        "trace_core/__init__.py",
        "trace_core/engine/__init__.py",
        "trace_core/engine/streams.py",
        "trace_core/chain_sync/__init__.py",
        "trace_core/chain_sync/planner.py",
        "trace_dagster/__init__.py",
    ):
        (tmp_path / f).write_text("")
    (tmp_path / "trace_dagster" / "jobs.py").write_text(
        "from trace_core.engine.streams import x\nfrom trace_core.chain_sync import planner\n"
        "from trace_core import chain_sync\n"
    )
    modules = {_module_name(p, tmp_path): p for p in tmp_path.rglob("*.py")}
    edges = import_edges(modules)
    assert edges["trace_dagster.jobs"] == {
        "trace_core.engine.streams",
        "trace_core.chain_sync.planner",
        "trace_core.chain_sync",
    }


def test_the_query_client_does_not_import_the_server() -> None:
    """``trace-lite query`` over HTTP or embedded needs the pipeline, never the Starlette app."""
    edges = _graph()
    assert "trace_core.query.app" not in edges["trace_core.query.client"]
    assert "trace_core.query.service" in edges["trace_core.query.client"]


def test_dev_tools_stay_out_of_production_code() -> None:
    """trace_lite.devtools (local chains, fixtures, proxies) is imported only by the demo and
    other dev tools, never by trace_core or trace_dagster."""
    users = sorted(
        src
        for src, dsts in _graph().items()
        if any(d.startswith("trace_lite.devtools") for d in dsts)
        and not src.startswith(("trace_lite.devtools", "trace_lite.demo"))
    )
    assert users == []


def test_every_package_directory_is_a_regular_package() -> None:
    """A folder of modules without ``__init__.py`` is a namespace package, which setuptools'
    ``packages.find`` leaves out of a wheel."""
    missing = sorted(
        str(d.relative_to(ROOT))
        for pkg in PACKAGES
        for d in [ROOT / pkg, *(ROOT / pkg).rglob("*")]
        if d.is_dir() and any(d.glob("*.py")) and not (d / "__init__.py").exists()
    )
    assert missing == []
