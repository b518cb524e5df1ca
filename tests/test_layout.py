"""The package's shape: no import circles (imports inside functions included), and the two
sides of the system meet only in the shared modules (job schema, run-folder contract, cache
lookup). Walks the source with ``ast``; imports nothing from hpcft."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "hpcft"

# Both sides may import these; they import only each other.
SHARED = {
    "hpcft", "hpcft.errors", "hpcft.atomic", "hpcft.config", "hpcft.yamlfile", "hpcft.job", "hpcft.dsconfig",
    "hpcft.slurm_time", "hpcft.slurmfmt", "hpcft.offline", "hpcft.rundir", "hpcft.assets",
    "hpcft.stage", "hpcft.stage.store", "hpcft.stage.resolve", "hpcft.stage.names", "hpcft.stage.safefs",
}
WORKER = "hpcft.worker"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every hpcft module ``name`` imports, at any depth of its code."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `import hpcft.a.b` names a module; `from x import func` does not
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, set(mods)) for name, path in mods.items()}


def _reach(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _side(name: str) -> str:
    if name in SHARED or name.startswith("hpcft.offline_shim"):
        return "shared"
    return "worker" if name == WORKER or name.startswith(WORKER + ".") else "login"


def test_the_walker_sees_imports_inside_functions():
    graph = _graph()
    assert "hpcft.dsconfig" in graph["hpcft.worker.runtime"]        # imported inside a function
    assert "hpcft.worker.progress" in graph["hpcft.worker.runtime"]  # `from . import progress`


def test_no_import_circles():
    assert _cycles(_graph()) == []


def test_login_side_never_imports_the_worker():
    graph = _graph()
    bad = {m: sorted(x for x in _reach(graph, m) if _side(x) == "worker")
           for m in graph if _side(m) == "login"}
    assert {m: v for m, v in bad.items() if v} == {}


def test_worker_and_shared_modules_never_import_the_login_side():
    graph = _graph()
    bad = {m: sorted(x for x in _reach(graph, m) if _side(x) == "login")
           for m in graph if _side(m) in ("worker", "shared")}
    assert {m: v for m, v in bad.items() if v} == {}


def test_shared_modules_exist():
    """The list above is the design: a renamed shared module must be renamed here too."""
    assert SHARED <= set(_modules())
