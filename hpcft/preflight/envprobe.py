"""Ask the job's Python what it has, once: :func:`probe`.

The pre-flight runs the job's interpreter (``PYTHON -I -c`` :func:`probe_script`, a few seconds at most) and
reads back, as JSON, the distributions installed there (``importlib.metadata``), the top-level
modules it can import (``pkgutil.iter_modules``, nothing imported) and the torch build: CUDA,
ROCm, NPU (torch_npu present) or CPU-only, read from ``torch/version.py`` as text (found with
``importlib.util.find_spec``; importing torch takes seconds). The answer is kept for this
process, and on disk in ``$HPCFT_HOME/envprobe/`` keyed by the interpreter's path, valid while
the interpreter and every folder on its ``sys.path`` keep their mtimes (``pip install`` changes
the mtime of the site-packages it writes to), so a second ``hpcft submit`` does not run it again.

When the interpreter cannot be run from here (a conda env on another mount, a module-loaded
Python), :func:`probe` returns None and the caller falls back to looking at files."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

TIMEOUT_S = 8.0
FORMAT = 1

def torch_info() -> "Optional[dict]":
    """torch's build as ``torch/version.py`` states it (:func:`read_version_file`) and whether
    torch_npu is installed, found with ``find_spec``: torch is not imported. None when torch is
    not installed. Stdlib only: :func:`probe_script` carries its source."""
    import importlib.util as iu
    import os

    spec = iu.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    info = read_version_file(os.path.join(list(spec.submodule_search_locations)[0], "version.py"))
    info["npu"] = iu.find_spec("torch_npu") is not None
    return info


def read_version_file(path: str) -> dict:
    """``__version__``, ``cuda`` and ``hip`` of a ``torch/version.py``, read as text (never run)."""
    import ast

    info: dict = {"dir": path.rsplit("/", 1)[0]}
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError) as exc:
        info["error"] = str(exc)
        return info
    for n in tree.body:
        target = n.targets[0] if isinstance(n, ast.Assign) else n.target if isinstance(n, ast.AnnAssign) else None
        if isinstance(target, ast.Name) and target.id in ("__version__", "cuda", "hip") and n.value is not None:
            try:
                info[target.id] = ast.literal_eval(n.value)
            except ValueError:
                continue
    return info


def _probe_main() -> None:
    """What the job's Python prints (``-I``: no user site, no PYTHONPATH of ours; imports nothing
    the job installed). ``sys.argv[1:]``: folders the job puts on its PYTHONPATH."""
    import importlib.metadata as md
    import json
    import os
    import pkgutil
    import sys

    for p in reversed(sys.argv[1:]):
        sys.path.insert(0, p)
    dists = {}
    for d in md.distributions():
        name = (d.metadata.get("Name") or "").lower().replace("_", "-").replace(".", "-")
        if name and name not in dists:  # the first on sys.path wins, as for imports
            dists[name] = d.version
    mods = {m.name for m in pkgutil.iter_modules()} | set(sys.builtin_module_names)
    for p in sys.path:  # namespace packages (a folder without __init__.py), which iter_modules skips
        try:
            mods |= {e.name for e in os.scandir(p or ".") if e.is_dir() and e.name.isidentifier()}
        except OSError:
            continue
    mods = sorted(mods)
    torch = torch_info()
    print(json.dumps({"executable": sys.executable, "version": sys.version.split()[0], "dists": dists,
                      "modules": mods, "torch": torch, "paths": [p for p in sys.path if p and os.path.isdir(p)],
                      "imported": sorted(m for m in ("torch", "torch_npu", "transformers") if m in sys.modules)}))


def probe_script() -> str:
    """The ``-c`` text: :func:`read_version_file`, :func:`torch_info` and :func:`_probe_main`, by their own source."""
    import inspect

    parts = [inspect.getsource(f) for f in (read_version_file, torch_info, _probe_main)]
    return "\n".join([*parts, "_probe_main()", ""])


@dataclass
class EnvFacts:
    """What the job's Python said about itself."""

    executable: str
    python_version: str
    dists: dict[str, str]          # normalised distribution name -> version
    modules: frozenset[str]        # importable top-level module names
    torch: Optional[dict]          # torch/version.py's __version__, cuda, hip; npu: torch_npu present
    imported: list[str]            # heavy modules the probe itself imported (must stay empty)
    paths: list[str]               # its sys.path folders: their mtimes key the disk cache
    cached: bool = False           # read from the disk cache, not run now

    def version(self, dist: str) -> Optional[str]:
        return self.dists.get(normalise(dist))

    def has(self, module: str) -> bool:
        return module in self.modules

    @property
    def torch_build(self) -> Optional[str]:
        return build_of(self.torch)


def build_of(torch: Optional[dict]) -> Optional[str]:
    """``cuda``, ``rocm``, ``npu`` or ``cpu`` from :func:`torch_info`; None when torch is not installed."""
    if torch is None:
        return None
    if torch.get("npu"):
        return "npu"
    if torch.get("hip"):
        return "rocm"
    if torch.get("cuda"):
        return "cuda"
    return "cpu"


def describe(torch: Optional[dict]) -> str:
    """``torch 2.13.0+cpu (a CPU-only build)``, ``torch 2.6.0+cu124 (CUDA 12.4)``, ..."""
    if torch is None:
        return "no torch"
    what = {"cuda": f"CUDA {torch.get('cuda')}", "rocm": f"ROCm {torch.get('hip')}", "npu": "with torch_npu",
            "cpu": "a CPU-only build"}[build_of(torch)]
    return f"torch {torch.get('__version__', '?')} ({what})"


def normalise(dist: str) -> str:
    return dist.lower().replace("_", "-").replace(".", "-")


_MEMO: dict[tuple, Optional[EnvFacts]] = {}


def probe(python: str, extra_paths: tuple[str, ...] = (), home: Optional[Path] = None,
          timeout: float = TIMEOUT_S) -> Optional[EnvFacts]:
    """The facts of interpreter ``python`` (an absolute path), or None when it cannot be run
    from here. Run at most once per process and interpreter, and once per change on disk."""
    key = (python, tuple(extra_paths))
    if key in _MEMO:
        return _MEMO[key]
    if not os.path.isabs(python) or not os.access(python, os.X_OK):
        _MEMO[key] = None
        return None
    cache = _cache_file(home, python, extra_paths)
    facts = _read_cache(cache, python)
    if facts is None:
        facts = _run(python, extra_paths, timeout)
        if facts is not None and cache is not None:
            _write_cache(cache, python, facts)
    _MEMO[key] = facts
    return facts


def forget() -> None:
    """Drop the in-process answers (tests; a long-lived process after a pip install)."""
    _MEMO.clear()


def _run(python: str, extra_paths: tuple[str, ...], timeout: float) -> Optional[EnvFacts]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "CONDA"))}
    try:
        proc = subprocess.run([python, "-I", "-c", probe_script(), *extra_paths], capture_output=True, text=True,
                              timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    try:
        data = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
    return _facts(data)


def _facts(data: dict, cached: bool = False) -> Optional[EnvFacts]:
    try:
        return EnvFacts(str(data["executable"]), str(data["version"]), dict(data["dists"]),
                        frozenset(data["modules"]), data.get("torch"), list(data.get("imported") or []),
                        list(data.get("paths") or []), cached)
    except (KeyError, TypeError, ValueError):
        return None


# --------------------------------------------------------------------------- the disk cache

def _cache_file(home: Optional[Path], python: str, extra_paths: tuple[str, ...]) -> Optional[Path]:
    if home is None:
        from ..core.config import hpcft_home

        home = hpcft_home()
    digest = hashlib.sha256("\0".join((python, *extra_paths)).encode()).hexdigest()[:24]
    return Path(home) / "envprobe" / f"{digest}.json"


def _stamps(python: str, paths: list[str]) -> Optional[dict[str, int]]:
    out = {}
    for p in [python, *paths]:
        try:
            out[p] = os.stat(p).st_mtime_ns
        except OSError:
            return None
    return out


def _read_cache(path: Optional[Path], python: str) -> Optional[EnvFacts]:
    if path is None:
        return None
    try:
        folder = os.lstat(path.parent)
        if folder.st_uid != os.getuid() or folder.st_mode & 0o022:  # not the user's own: ask again
            return None
        entry = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or entry.get("format") != FORMAT or entry.get("python") != python:
        return None
    data = entry.get("facts") or {}
    if entry.get("stamps") != _stamps(python, list(data.get("paths") or [])):
        return None  # something was installed, removed or upgraded since
    return _facts(data, cached=True)


def _write_cache(path: Path, python: str, facts: EnvFacts) -> None:
    """Atomic (temp + rename) in a 0700 folder of the user's own; a cache that cannot be
    written is only slower next time."""
    from ..core.atomic import atomic_write_text

    paths = facts.paths
    stamps = _stamps(python, paths)
    if stamps is None:
        return
    data = {"executable": facts.executable, "version": facts.python_version, "dists": facts.dists,
            "modules": sorted(facts.modules), "torch": facts.torch, "paths": paths, "imported": facts.imported}
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"format": FORMAT, "python": python, "stamps": stamps, "facts": data}),
                          mode=0o600, durable=False)
    except OSError:
        return

