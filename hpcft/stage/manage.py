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
            elif sha256_file(p, limit=f["size"]) != f["sha256"]:
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
    """Remove one asset: its manifest, then its own snapshot folder (the one its manifest is bound
    to, :mod:`hpcft_trust`) when that folder belongs to the manifest's owner; the repo's folder
    goes only once nothing else is in it. Never a folder shared by other assets or users."""
    kind, rid, cfg = m["kind"], m["repo_id"], m.get("config")
    folder = Path(m["path"])
    try:
        fst = os.lstat(folder)
    except OSError:
        fst = None
    if fst is not None and (not stat.S_ISDIR(fst.st_mode) or fst.st_uid != m.get("_owner")):
        raise ConfigError([f"hpcft cache rm {rid}: {folder} does not belong to the manifest's owner "
                           f"({owner_name(m.get('_owner', -1))}); refused, nothing removed"])
    with lock(cache, kind, rid, cfg), Dir.open_root(cache.root) as root:
        with root.sub(rel_parts(cache.manifest_path(kind, rid, cfg).parent, cache.root)) as mdir:
            try:
                mdir.unlink(cache.manifest_path(kind, rid, cfg).name)  # first: no longer staged
            except FileNotFoundError:
                pass
        if fst is None:
            return
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
        with root.sub(parent_rel) as parent:
            remove_tree(parent, base)
        if kind == "metric":  # metrics/ORG--NAME/SHA/NAME: the SHA folder and ORG--NAME go when empty
            _prune(root, parent_rel)
            return
        repo_rel = parent_rel.rsplit("/snapshots", 1)[0]
        if not any(o.get("repo_id") == rid and o.get("kind") == kind for o in cache.manifests()):
            _drop_repo(root, repo_rel, m.get("sha"))


def _drop_repo(root: Dir, repo_rel: str, sha: Optional[str]) -> None:
    """``hf/hub/models--ORG--NAME`` once its last asset is gone: our refs that name ``sha``, then
    ``refs/``, ``snapshots/`` and the folder itself, each only if empty (another user's snapshot or
    ref keeps it), then our alias links to it."""
    hub_rel, repo_name = repo_rel.rsplit("/", 1)
    with root.sub(hub_rel) as hub:
        st = hub.lstat(repo_name)
        if st is None or not stat.S_ISDIR(st.st_mode):
            return
        with hub.sub(repo_name) as repo:
            refs = repo.lstat("refs")
            if refs is not None and stat.S_ISDIR(refs.st_mode):
                with repo.sub("refs") as rdir:
                    for ref in rdir.entries():
                        rst = rdir.lstat(ref)
                        if rst is not None and stat.S_ISREG(rst.st_mode) and rst.st_uid == ME \
                                and _read_small(rdir, ref) == sha:
                            rdir.unlink(ref)
            for sub in ("refs", "snapshots"):
                try:
                    os.rmdir(sub, dir_fd=repo.fd)
                except OSError:
                    pass  # not empty (another user's entry), or absent: it stays
        try:
            os.rmdir(repo_name, dir_fd=hub.fd)
        except OSError:
            return
        for link in hub.entries():
            lst = hub.lstat(link)
            if lst is not None and stat.S_ISLNK(lst.st_mode) and lst.st_uid == ME \
                    and os.readlink(link, dir_fd=hub.fd) == repo_name:
                hub.unlink(link)


def _read_small(folder: Dir, name: str) -> str:
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder.fd)
    with os.fdopen(fd, "rb") as fh:
        return fh.read(200).decode("ascii", "replace").strip()


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
