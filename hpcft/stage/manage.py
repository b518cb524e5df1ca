"""``hpcft cache ls | verify | rm``: the cache's contents, re-hashed, removed."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..atomic import file_lock
from ..errors import ConfigError, NotFoundError
from .cards import sync_staged_configs
from .layout import metric_module_dir, repo_root
from .store import Cache, sha256_file


def _names(m: dict) -> list[str]:
    rid, cfg = m.get("repo_id", ""), m.get("config")
    names = [rid, *m.get("aliases", [])]
    if cfg:
        names += [f"{rid}:{cfg}", f"{rid}/{cfg}"] + [f"{a}:{cfg}" for a in m.get("aliases", [])]
    return names


def matching(cache: Cache, name: Optional[str], kind: Optional[str] = None) -> list[dict]:
    out = []
    for m in cache.manifests():
        if kind and m.get("kind") != kind:
            continue
        if name is None or name in _names(m):
            out.append(m)
    return out


def rows(cache: Cache) -> list[dict[str, Any]]:
    out = []
    for m in cache.manifests():
        out.append({"kind": m.get("kind"), "name": m["repo_id"] + (f":{m['config']}" if m.get("config") else ""),
                    "aliases": m.get("aliases", []), "source": m.get("source"), "endpoint": m.get("endpoint"),
                    "revision": m.get("revision"), "sha": m.get("sha"), "size": m.get("size", 0),
                    "files": len(m.get("files", [])), "staged_at": m.get("staged_at"), "path": m.get("path")})
    return out


@dataclass
class Problem:
    asset: str
    path: str
    what: str  # missing | size | sha256

    def line(self) -> str:
        return f"{self.asset}: {self.path}: {self.what}"


def verify(cache: Cache, name: Optional[str] = None, kind: Optional[str] = None) -> tuple[list[dict], list[Problem]]:
    found = matching(cache, name, kind)
    if name is not None and not found:
        raise NotFoundError(f"nothing staged under the name {name!r} in {cache.root} (see hpcft cache ls)")
    problems: list[Problem] = []
    for m in found:
        label = f"{m['kind']} {m['repo_id']}" + (f":{m['config']}" if m.get("config") else "")
        folder = Path(m["path"])
        for f in m.get("files", []):
            p = folder / f["path"]
            if not p.is_file():
                problems.append(Problem(label, str(p), "missing"))
            elif p.stat().st_size != f["size"]:
                problems.append(Problem(label, str(p), f"size {p.stat().st_size} != {f['size']}"))
            elif sha256_file(p) != f["sha256"]:
                problems.append(Problem(label, str(p), "sha256 differs from the manifest"))
    return found, problems


def remove(cache: Cache, name: str, kind: Optional[str] = None) -> list[dict]:
    found = matching(cache, name, kind)
    if not found:
        raise NotFoundError(f"nothing staged under the name {name!r} in {cache.root} (see hpcft cache ls)")
    if len({m["kind"] for m in found}) > 1:
        raise ConfigError([f"hpcft cache rm {name}: the name matches " + ", ".join(
            f"{m['kind']} {m['repo_id']}" for m in found) + "; add --kind model|dataset|metric"])
    for m in found:
        _remove_one(cache, m)
    return found


def _remove_one(cache: Cache, m: dict) -> None:
    kind, rid, cfg = m["kind"], m["repo_id"], m.get("config")
    with file_lock(cache.lock_path(kind, rid, cfg)):
        cache.manifest_path(kind, rid, cfg).unlink(missing_ok=True)  # first: no longer staged
        folder = Path(m["path"])
        others = [o for o in cache.manifests() if o.get("path") == m["path"]]
        if others:  # another config shares the snapshot: drop only files nobody else lists
            keep = {f["path"] for o in others for f in o.get("files", [])}
            for f in m.get("files", []):
                if f["path"] not in keep:
                    (folder / f["path"]).unlink(missing_ok=True)
            if kind == "dataset":
                sync_staged_configs(folder, cache.root / "locks")
            return
        if kind == "metric":
            shutil.rmtree(folder.parent, ignore_errors=True)
            shutil.rmtree(metric_module_dir(cache, rid), ignore_errors=True)
            _prune(folder.parent.parent, cache.root)
            return
        shutil.rmtree(folder, ignore_errors=True)
        root = repo_root(cache, kind, rid)
        if not any(o.get("repo_id") == rid and o.get("kind") == kind for o in cache.manifests()):
            shutil.rmtree(root, ignore_errors=True)
            hub = root.parent
            for link in hub.iterdir() if hub.is_dir() else []:
                if link.is_symlink() and os.readlink(link) == root.name:
                    link.unlink()


def _prune(folder: Path, top: Path) -> None:
    while folder != top and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent
