"""The package's shape: no import circles (imports inside functions included), and the side each
module runs on is named by its folder, not by a list kept by hand:

* ``hpcft/core/`` and ``hpcft/offline_shim/``: shared by both sides; they import only each other;
* ``hpcft/worker/``: the compute side; never imports the login side;
* every other folder (``cli``, ``cluster``, ``stage``, ``submit``, ``preflight``, ``runs``, ``use``):
  the login side; never imports the worker;
* at the top of ``hpcft/`` only names that pickles and saved scripts refer to (each says so).

Walks the source with ``ast``; imports nothing from hpcft. The README's Layout section is
checked against the tree here too."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "hpcft"
SHARED_FOLDERS = ("hpcft.core", "hpcft.offline_shim")
WORKER = "hpcft.worker"
LOGIN_FOLDERS = ("hpcft.cli", "hpcft.cluster", "hpcft.stage", "hpcft.submit", "hpcft.preflight", "hpcft.runs",
                 "hpcft.use")
# the only modules at the top: the package itself and names that submitit pickles or saved scripts run
TOP_LEVEL = {"hpcft", "hpcft.entry", "hpcft.launch", "hpcft.scow_rerun", "hpcft.__main__"}


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


def _in(name: str, folders) -> bool:
    return any(name == f or name.startswith(f + ".") for f in folders)


def _side(name: str) -> str:
    if _in(name, SHARED_FOLDERS) or name == "hpcft":
        return "shared"
    if _in(name, (WORKER,)):
        return "worker"
    if _in(name, LOGIN_FOLDERS) or name in TOP_LEVEL:
        return "login"
    raise AssertionError(f"{name}: not in a folder that names its side (core, worker, or a login folder)")


def test_every_module_lives_in_a_folder_that_names_its_side():
    loose = sorted(m for m in _modules() if m.count(".") == 1 and m not in TOP_LEVEL
                   and not any(m == f for f in (*SHARED_FOLDERS, WORKER, *LOGIN_FOLDERS)))
    assert loose == [], "modules at the top of hpcft/ (move them into core/, worker/ or a login folder)"
    for m in _modules():
        _side(m)


def test_top_level_modules_say_why_they_are_there():
    for name in TOP_LEVEL - {"hpcft", "hpcft.__main__"}:
        path = PKG / f"{name.split('.')[1]}.py"
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        assert re.search(r"pickle|saved|Kept at this name|Compatibility name", doc), (name, doc[:120])


def test_readme_layout_matches_the_tree():
    """Every folder of hpcft/ is named in the README's Layout section, and nothing that is gone."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("### Layout"):]
    section = section[:section.index("\n### ", 5)] if "\n### " in section[5:] else section
    folders = {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    named = set(re.findall(r"hpcft/([a-z_]+)/", section))
    assert folders - named == set(), f"folders missing from the README's Layout: {sorted(folders - named)}"
    assert named - folders == set(), f"the README's Layout names folders that do not exist: {sorted(named - folders)}"


def test_the_walker_sees_imports_inside_functions():
    graph = _graph()
    assert "hpcft.core.dsconfig" in graph["hpcft.worker.trainer"]        # imported inside a function
    assert "hpcft.worker.device" in graph["hpcft.worker.trainer"]    # `from . import device as dev`


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


def test_the_folders_hold_what_they_say():
    mods = set(_modules())
    for folder in (*SHARED_FOLDERS, WORKER, *LOGIN_FOLDERS):
        assert folder in mods, f"{folder} has no __init__.py"


ENGINES = "hpcft.worker.engines"


def _engine(name: str) -> str | None:
    """The engine room a module belongs to (``native``, ``llamafactory``, ...), or None."""
    if not name.startswith(ENGINES + "."):
        return None
    return name[len(ENGINES) + 1:].split(".")[0]


def test_engine_rooms_never_import_each_other():
    """Two engines read as two rooms: each imports the skeleton, data/ and core/, never another engine."""
    graph = _graph()
    rooms = {_engine(m) for m in graph} - {None}
    assert {"native", "script"} <= rooms, sorted(rooms)
    bad = {m: sorted(x for x in graph[m] if _engine(x) not in (None, _engine(m)))
           for m in graph if _engine(m)}
    assert {m: v for m, v in bad.items() if v} == {}


def test_only_the_entry_point_picks_an_engine():
    """Outside engines/, only main (the dispatch) imports the engines other than the native one
    (whose tasks the skeleton's phases serve): so adding an engine touches main and its own room."""
    graph = _graph()
    bad = {m: sorted(x for x in graph[m] if _engine(x) not in (None, "native"))
           for m in graph if _side(m) == "worker" and not _engine(m) and m != "hpcft.worker.main"}
    assert {m: v for m, v in bad.items() if v} == {}
