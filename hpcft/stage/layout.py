"""Putting a verified download into the cache so both hpcft and the HF libraries find it.

For each staged asset (``store.py`` has the base layout)::

    hf/hub/models--ORG--NAME/refs/{main,REV}       commit sha (what offline from_pretrained reads)
    hf/hub/models--ALIAS -> models--ORG--NAME      names users type (bert-base-uncased)
    hf/hub/datasets--ORG--NAME/...                 same for datasets (+ the shim, see offline_shim)
    metrics/ORG--NAME/SHA/NAME/                    the evaluate module (evaluate.load(path) works)
    hf/modules/evaluate_modules/metrics/evaluate-metric--NAME/HASH/NAME.py
                                                   what evaluate.load("NAME") finds offline

Permissions: files 0644, folders 0755 -- or, with ``cache_group``, folders 2775 (setgid)
and everything chgrp'ed to the group, so the group can stage and read. Never world-writable.
"""

from __future__ import annotations

import grp
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import StageError
from .store import Cache, asset_key

# writable-by-jobs folders of HF_HOME (datasets' arrow cache, evaluate's module and metric caches),
# and ModelScope's cache
RUNTIME_DIRS = ("hf/datasets", "hf/modules", "hf/metrics", "modelscope")


@dataclass
class Perms:
    gid: Optional[int] = None

    @classmethod
    def from_settings(cls, settings) -> "Perms":
        group = getattr(settings, "cache_group", None)
        if not group:
            return cls(None)
        try:
            return cls(grp.getgrnam(group).gr_gid)
        except KeyError:
            raise StageError(f"cache_group {group!r} is not a group on this machine (check `getent group "
                             f"{group}` and cache_group in the hpcft config)") from None

    @property
    def dir_mode(self) -> int:
        return 0o2775 if self.gid is not None else 0o755

    def dir(self, path: Path) -> None:
        if self.gid is not None:
            _chgrp(path, self.gid)
        os.chmod(path, self.dir_mode)

    def file(self, path: Path) -> None:
        if self.gid is not None:
            _chgrp(path, self.gid)
        os.chmod(path, 0o644)

    def tree(self, root: Path) -> None:
        self.dir(root)
        for dirpath, dirnames, filenames in os.walk(root):
            for d in dirnames:
                p = Path(dirpath, d)
                if not p.is_symlink():
                    self.dir(p)
            for f in filenames:
                p = Path(dirpath, f)
                if not p.is_symlink():
                    self.file(p)

    def makedirs(self, path: Path, top: Path) -> Path:
        """mkdir -p, setting our mode/group on each folder created below ``top``."""
        path = Path(path)
        missing = []
        p = path
        while not p.exists() and p != top and p != p.parent:
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:
                continue
            self.dir(d)
        return path


def _chgrp(path: Path, gid: int) -> None:
    try:
        if os.lstat(path).st_gid != gid:
            os.chown(path, -1, gid, follow_symlinks=False)
    except PermissionError:
        raise StageError(f"cannot give {path} to group {gid}: you must be a member of cache_group") from None


def prepare_cache(cache: Cache, perms: Perms) -> None:
    """Create the cache's top folders; fail clearly when the cache is not writable."""
    root = cache.root
    try:
        if not root.exists():
            try:
                root.mkdir(parents=True)
                perms.dir(root)
            except FileExistsError:
                pass  # another stage process created it a moment ago: that is fine
        for sub in ("tmp", "locks", "manifests/model", "manifests/dataset", "manifests/metric", "metrics",
                    "hf/hub", *RUNTIME_DIRS):
            perms.makedirs(root / sub, root)
        probe = cache.tmp / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise StageError(f"cache dir {root} is not writable ({exc.strerror or exc}); choose another with "
                         "--cache DIR, HPCFT_CACHE or cache_dir in the hpcft config") from None


def repo_root(cache: Cache, kind: str, repo_id: str) -> Path:
    """hf/hub/models--ORG--NAME (the parent of snapshots/)."""
    return cache.asset_dir(kind, repo_id, "x").parent.parent


def install(cache: Cache, perms: Perms, kind: str, repo_id: str, sha: str, staging: Path) -> Path:
    """Move a verified folder into its final place: one rename if new, else file by file."""
    final = cache.asset_dir(kind, repo_id, sha)
    perms.tree(staging)
    perms.makedirs(final.parent, cache.root)
    if not final.exists():
        try:
            os.replace(staging, final)
            return final
        except OSError:
            if not final.exists():
                raise
    # the snapshot exists (another config of the same dataset at the same commit): merge
    for src in sorted(staging.rglob("*")):
        rel = src.relative_to(staging)
        dst = final / rel
        if src.is_dir():
            perms.makedirs(dst, final)
        elif not dst.exists():
            perms.makedirs(dst.parent, final)
            os.replace(src, dst)
    return final


def write_ref(cache: Cache, perms: Perms, kind: str, repo_id: str, revision: str, sha: str) -> None:
    if kind == "metric":
        return
    refs = repo_root(cache, kind, repo_id) / "refs"
    perms.makedirs(refs, cache.root)
    for name in {revision, "main"} if revision in ("main", "master") or revision == sha else {revision}:
        if name == sha:
            continue
        target = refs / name
        perms.makedirs(target.parent, refs)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_text(sha)
        perms.file(tmp)
        os.replace(tmp, target)


def link_aliases(cache: Cache, kind: str, repo_id: str, names) -> list[str]:
    """``models--bert-base-uncased -> models--google-bert--bert-base-uncased`` for hub-style names."""
    if kind == "metric":
        return []
    made = []
    real = repo_root(cache, kind, repo_id)
    for name in names:
        if not name or name == repo_id or name.count("/") > 1 or " " in name or ":" in name \
                or name.startswith((".", "/", "~")):
            continue
        link = repo_root(cache, kind, name)
        if link == real:
            continue
        if link.is_symlink() and os.readlink(link) == real.name:
            made.append(link.name)
            continue
        if link.exists() or link.is_symlink():
            continue  # a real repo of that name, or an alias to another repo: leave it
        tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
        try:
            os.symlink(real.name, tmp)
            os.replace(tmp, link)
            made.append(link.name)
        except OSError:
            if tmp.is_symlink():
                tmp.unlink()
    return made


def metric_module_dir(cache: Cache, repo_id: str) -> Path:
    return cache.root / "hf" / "modules" / "evaluate_modules" / "metrics" / repo_id.replace("/", "--")


def install_metric_module(cache: Cache, perms: Perms, repo_id: str, folder: Path) -> Optional[Path]:
    """Lay the module out as evaluate's own module cache does after an online load, so that
    ``evaluate.load("glue")`` with HF_EVALUATE_OFFLINE=1 finds it with no network."""
    name = repo_id.split("/")[-1]
    script = folder / f"{name}.py"
    if not script.is_file():
        return None
    pys = sorted(p for p in folder.glob("*.py"))
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in pys)).hexdigest()
    base = cache.root / "hf" / "modules"
    top = metric_module_dir(cache, repo_id)
    final = top / digest
    for pkg in (base / "evaluate_modules", base / "evaluate_modules" / "metrics", top):
        perms.makedirs(pkg, cache.root)
        init = pkg / "__init__.py"
        if not init.exists():
            init.touch()
            perms.file(init)
    if final.is_dir():
        return final
    tmp = top / f".{digest}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for p in pys:
        shutil.copyfile(p, tmp / p.name)
    (tmp / "__init__.py").touch()
    (tmp / f"{name}.json").write_text(
        f'{{"original file path": "{script}", "local file path": "{final / (name + ".py")}"}}')
    perms.tree(tmp)
    try:
        os.replace(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def tmp_dir(cache: Cache, kind: str, repo_id: str, config: Optional[str], source: str, sha: str) -> Path:
    """A fixed name per (asset, source, commit): the next run finds and resumes it."""
    return cache.tmp / f"{kind}--{asset_key(kind, repo_id, config)}--{source}-{sha[:12]}"
