"""``hpcft cache ls | verify | rm``: the cache's contents, re-hashed, removed."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..core.errors import ConfigError, NotFoundError
from ..core.safefs import ME, Dir, owner_name, rel_parts, remove_tree
from ..core.store import Cache, sha256_file
from .cards import sync_staged_configs
from .layout import lock


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
    what: str  # missing | size | sha256 | untrusted: why

    def line(self) -> str:
        return f"{self.asset}: {self.path}: {self.what}"


def untrusted(cache: Cache, name: Optional[str] = None, kind: Optional[str] = None) -> list[Problem]:
    """Manifests that fail the trust check (forged, planted, pointing outside the cache or at
    another user's files): ignored by every lookup, reported here."""
    out = []
    for path, data, why in cache.records():
        if not why:
            continue
        if isinstance(data, dict) and ((kind and data.get("kind") != kind) or (name and name not in _names(data))):
            continue
        if not isinstance(data, dict) and (name or kind):
            continue
        who = owner_name(os.lstat(path).st_uid) if os.path.lexists(path) else "?"
        out.append(Problem(f"manifest by {who}", str(path), f"not trusted, ignored: {why}"))
    return out


def verify(cache: Cache, name: Optional[str] = None, kind: Optional[str] = None) -> tuple[list[dict], list[Problem]]:
    found = matching(cache, name, kind)
    bad = untrusted(cache, name, kind)
    if name is not None and not found and not bad:
        raise NotFoundError(f"nothing staged under the name {name!r} in {cache.root} (see hpcft cache ls)")
    problems: list[Problem] = list(bad)
    for m in found:
        label = f"{m['kind']} {m['repo_id']}" + (f":{m['config']}" if m.get("config") else "")
        folder = Path(m["path"])
        for f in m.get("files", []):
            p = folder / f["path"]
            try:
                st = os.lstat(p)
            except OSError:
                problems.append(Problem(label, str(p), "missing"))
                continue
            if not stat.S_ISREG(st.st_mode):
                problems.append(Problem(label, str(p), "not a regular file"))
            elif st.st_size != f["size"]:
                problems.append(Problem(label, str(p), f"size {st.st_size} != {f['size']}"))
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
    theirs = [m for m in found if m.get("_owner") not in (ME, None) and ME not in (0, *cache.admins)]
    if theirs:
        who = ", ".join(sorted({owner_name(m["_owner"]) for m in theirs}))
        raise ConfigError([f"hpcft cache rm {name}: staged by {who}; only they or the cache admin can remove it "
                           "(the cache's folders are sticky)"])
    for m in found:
        _remove_one(cache, m)
    return found


def _remove_one(cache: Cache, m: dict) -> None:
    kind, rid, cfg = m["kind"], m["repo_id"], m.get("config")
    with lock(cache, kind, rid, cfg), Dir.open_root(cache.root) as root:
        with root.sub(rel_parts(cache.manifest_path(kind, rid, cfg).parent, cache.root)) as mdir:
            try:
                mdir.unlink(cache.manifest_path(kind, rid, cfg).name)  # first: no longer staged
            except FileNotFoundError:
                pass
        folder = Path(m["path"])
        parent_rel, base = rel_parts(folder, cache.root).rsplit("/", 1)
        others = [o for o in cache.manifests() if o.get("path") == m["path"]]
        if others:  # another config shares the snapshot: drop only files nobody else lists
            keep = {f["path"] for o in others for f in o.get("files", [])}
            with root.sub(f"{parent_rel}/{base}", shared=False) as d:
                for f in m.get("files", []):
                    if f["path"] not in keep and d.lstat(f["path"]) is not None:
                        d.unlink(f["path"])
            if kind == "dataset":
                sync_staged_configs(cache, folder)
            return
        if kind == "metric":  # metrics/ORG--NAME/SHA/NAME: the SHA folder goes
            sha_rel = parent_rel
            top_rel, sha = sha_rel.rsplit("/", 1)
            with root.sub(top_rel) as top:
                remove_tree(top, sha)
            _prune(root, top_rel)
            return
        with root.sub(parent_rel) as parent:
            remove_tree(parent, base)
        repo_rel = parent_rel.rsplit("/snapshots", 1)[0]
        if not any(o.get("repo_id") == rid and o.get("kind") == kind for o in cache.manifests()):
            hub_rel, repo_name = repo_rel.rsplit("/", 1)
            with root.sub(hub_rel) as hub:
                st = hub.lstat(repo_name)
                if st is not None and st.st_uid == ME:
                    remove_tree(hub, repo_name)
                for link in hub.entries():
                    lst = hub.lstat(link)
                    if lst is not None and stat.S_ISLNK(lst.st_mode) and lst.st_uid == ME \
                            and os.readlink(link, dir_fd=hub.fd) == repo_name:
                        hub.unlink(link)


def _prune(root: Dir, rel: str) -> None:
    """Remove ``rel`` and its parents while they are empty (and ours)."""
    while "/" in rel and rel.split("/")[0] in ("metrics",) and rel != "metrics":
        parent_rel, base = rel.rsplit("/", 1)
        with root.sub(parent_rel) as parent:
            try:
                os.rmdir(base, dir_fd=parent.fd)
            except OSError:
                return
        rel = parent_rel
