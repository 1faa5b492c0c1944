"""The package's shape: imports only run down the floors below (so no circle), and modules stay small."""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "atcd")

# each floor may import only from its own floor and those below it
FLOORS = [
    ("atcd.errors", "atcd.options", "atcd.registry", "atcd.cli", "atcd.device", "atcd.schedule", "atcd.optim",
     "atcd.trackers", "atcd.signals", "atcd.precision", "atcd.cluster"),
    ("atcd", "atcd.checkpoint", "atcd.summary", "atcd.models"),
    ("atcd.data",),
    ("atcd.attacks",),
    ("atcd.methods",),
    ("atcd.run_options", "atcd.config", "atcd.faults", "atcd.ranks", "atcd.launch"),
    ("atcd.engine", "atcd.sanity", "atcd.sweep", "atcd.diagnostics", "atcd.ema", "atcd.provenance"),
    ("atcd.trainer", "atcd.evaluator"),
    ("atcd.publish", "atcd.main"),
]


def _modules() -> dict[str, str]:
    out = {}
    for d, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(d, f), ROOT)[:-3].replace(os.sep, ".")
                out[rel.removesuffix(".__init__")] = os.path.join(d, f)
    return out


def _imports(name: str, path: str, known: set[str]) -> set[str]:
    """atcd modules that `name` imports anywhere in its file (deferred imports inside functions included)."""
    is_pkg = path.endswith("__init__.py")
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    found = set()
    with open(path) as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            stem = ".".join(base[:len(base) - node.level + 1] if node.level else []) if node.level else ""
            mod = ".".join(p for p in (stem, node.module or "") if p) if node.level else (node.module or "")
            targets = [f"{mod}.{a.name}" for a in node.names] + [mod]
        for t in targets:
            while t and t not in known:  # `from .x import Name` -> atcd.x
                t = t.rpartition(".")[0]
            if t and t != name and t.startswith("atcd"):
                found.add(t)
    return found


def _floor(name: str) -> int:
    best = None
    for i, names in enumerate(FLOORS):
        for n in names:
            if (name == n or name.startswith(n + ".")) and (best is None or len(n) > len(best[1])):
                best = (i, n)
    assert best is not None, f"{name} is on no floor: add it to FLOORS"
    return best[0]


def test_imports_only_run_down_the_floors():
    mods = _modules()
    up = []
    for name, path in mods.items():
        for dep in _imports(name, path, set(mods)):
            if name.startswith(dep + ".") and path.endswith("__init__.py") is False:
                continue  # a module needs its own package initialised: not an edge of the graph
            if _floor(dep) > _floor(name):
                up.append(f"{name} -> {dep}")
    assert not up, up


def test_the_import_graph_has_no_circle():
    mods = _modules()
    graph = {n: {d for d in _imports(n, p, set(mods)) if not n.startswith(d + ".")} for n, p in mods.items()}
    state: dict[str, int] = {}

    def visit(n, stack):
        state[n] = 1
        for d in graph.get(n, ()):
            if state.get(d) == 1:
                pytest.fail("import circle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d, stack + [d])
        state[n] = 2

    for n in graph:
        if n not in state:
            visit(n, [n])


def test_modules_stay_small():
    sizes = {}
    for name, p in _modules().items():
        with open(p) as f:
            sizes[name] = len(f.readlines())
    assert sizes["atcd.config"] < 250, sizes["atcd.config"]
    big = {n: s for n, s in sizes.items() if s > 450}
    assert not big, big
