"""The import graph of trace_core: no cycle, and no package imports a package above it.

Every ``import``/``from ... import`` in trace_core counts: module level, function-local and
``TYPE_CHECKING`` ones alike (a local import hides an arrow, it does not remove it). An import
resolves to the most specific trace_core module it names (``from trace_core.chain_sync import
planner`` is an arrow to ``trace_core.chain_sync.planner``).

The layers, lowest first. A module may import its own layer's other packages only where listed
in ``SAME_LAYER`` order, and any lower layer; never a higher one:

- ``errors``, ``settings``, ``logs``, ``yamlfile``: the vocabulary (errors, typed settings,
  logging fields, the line-aware YAML loader every spec uses).
- ``db``: connections, embedded Postgres, migrations, named queries.
- ``queue``, ``storage``: the two I/O adapters (QueueDriver, ObjectStore).
- ``outbox``: durable intent -> queue.
- ``tasks``: the task state machine (create, claim, heartbeat, complete, reap).
- ``runtime``: settings + databases + queue + store, handed to everything above.
- ``udf``: the UDF contract, the sandboxed runtimes and code bundles.
- ``datasets``: versions, manifests, the commit protocol, cryo's column schemas.
- ``udf``: the UDF contract, sandbox runtimes and code bundles.
- ``rpc``, ``rpcpool``, ``rpc_limits``: the JSON-RPC client, pools of endpoints, per-pool
  limits.
- ``hot``: the block follower's Postgres tables, finality, reorgs, compaction.
- ``operators``: the operator contract (``operators.base``) and the operators themselves.
- ``chain_sync``: job specs, the planner (builds operator payloads), status, retry, revive.
- ``query``: the SQL gate, attach, engine, tokens, HTTP app.
- ``sinks``: consumer queues fed from committed data.
- ``transforms``: transform jobs (spec, state, on-input routing, the ``udf_transform`` operator).
- ``sources``: cron, webhook and manual triggers of transform jobs (source event + task).
- ``alerts``: alert specs, routing of dataset events, evaluation (an operator), delivery.
- ``analytics``: derived datasets computed over committed versions (their YAML block is
  ``chain_sync.analytics_spec``, part of a job's spec).
- ``integrity``: verification and repair over chain_sync's ranges.
- ``builtin_operators``: the registry of every built-in operator with its hooks.
- ``worker``, ``dispatcher``, ``services``, ``devchain``, ``devstaking``, ``rpcproxy``: the loops that run
  it all, and the local dev chain.
- ``cli``: the command line, on top.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "trace_core"

LAYERS: list[set[str]] = [
    {"errors", "settings", "logs", "yamlfile"},
    {"db"},
    {"queue", "storage"},
    {"outbox"},
    {"tasks"},
    {"runtime"},
    {"udf"},
    {"datasets"},
    {"udf"},
    {"rpc", "rpcpool", "rpc_limits"},
    {"hot"},
    {"operators"},
    {"chain_sync"},
    {"query"},
    {"sinks"},
    {"transforms"},
    {"sources"},
    {"alerts"},
    {"analytics"},
    {"integrity"},
    {"builtin_operators"},
    {"worker", "dispatcher", "services", "service_steps", "devchain", "devstaking", "rpcproxy"},
    {"cli"},
]
# Within one layer, a package may import only the packages listed before it here.
SAME_LAYER: list[list[str]] = [
    ["errors", "settings", "logs", "yamlfile"],
    ["queue", "storage"],
    ["rpc", "rpcpool", "rpc_limits"],
    ["rpcproxy", "devchain", "devstaking", "worker", "dispatcher", "services", "service_steps"],
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PKG.rglob("*.py")}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The most specific existing trace_core module ``name`` refers to."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name if name.startswith("trace_core") else None


def import_edges(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the trace_core modules it imports (anywhere in the file)."""
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


def _top(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else ""


def _rank(top: str) -> tuple[int, int]:
    for i, layer in enumerate(LAYERS):
        if top in layer:
            for order in SAME_LAYER:
                if top in order:
                    return i, order.index(top)
            return i, 0
    raise AssertionError(f"trace_core.{top} is in no layer: add it to LAYERS")


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


def test_every_trace_core_package_has_a_layer() -> None:
    tops = {_top(m) for m in _modules()} - {""}
    for top in tops:
        _rank(top)


def test_no_import_cycle_between_modules() -> None:
    cycles = _cycles(import_edges(_modules()))
    assert not cycles, "\n".join(" <-> ".join(c) for c in cycles)


def test_no_import_cycle_between_packages() -> None:
    pkg_edges: dict[str, set[str]] = defaultdict(set)
    for src, dsts in import_edges(_modules()).items():
        for dst in dsts:
            if _top(src) and _top(dst) and _top(src) != _top(dst):
                pkg_edges[_top(src)].add(_top(dst))
    cycles = _cycles(pkg_edges)
    assert not cycles, "\n".join(" <-> ".join(c) for c in cycles)


def test_no_upward_import_between_packages() -> None:
    upward = sorted(
        f"{src} -> {dst}"
        for src, dsts in import_edges(_modules()).items()
        for dst in dsts
        if _top(src)
        and _top(dst)
        and _top(src) != _top(dst)
        and _rank(_top(dst)) > _rank(_top(src))
    )
    assert not upward, "\n".join(upward)


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
    modules = {
        ".".join(p.relative_to(tmp_path).with_suffix("").parts).removesuffix(".__init__"): p
        for p in pkg.rglob("*.py")
    }
    edges = import_edges(modules)
    assert edges["trace_core.hot.compact"] == {"trace_core.alerts.routing", "trace_core.hot.other"}
    assert _cycles(edges) == [["trace_core.hot.compact", "trace_core.hot.other"]]
    assert _rank("alerts") > _rank("hot")
