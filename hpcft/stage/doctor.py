"""``hpcft cache doctor [--fix]``: is this shared cache safe to share?

Reports what would let one member of the cache's group alter what another staged (see
docs/staging.md, "Security model"): shared folders that others can write to without the
sticky bit, staged folders and files that others can write to, folders not in the cache's
group, symbolic links other than the hub-layout aliases hpcft makes, and manifests that fail
the trust check. ``--fix`` repairs what the caller owns (through descriptors, never following
a link); the rest is listed with its owner, who (or the admin) has to run it.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from typing import Optional

from ..core.safefs import ME, O_DIR, Modes, owner_name
from ..core.store import Cache

# folders that hold a staged asset (their files are the asset): relative to the cache root
_ASSET = re.compile(r"^(hf/hub/(models|datasets)--[^/]+/snapshots/[^/]+|metrics/[^/]+/[^/]+)(/.*)?$")
_ALIAS = re.compile(r"^hf/hub/(models|datasets)--[^/]+$")
# folders jobs write into (datasets' arrow cache, evaluate's caches): files there are the jobs'
_RUNTIME = ("hf/datasets", "hf/metrics", "modelscope")


@dataclass
class Finding:
    path: str
    what: str
    owner: str
    fixed: bool = False

    def line(self) -> str:
        return f"{'fixed' if self.fixed else '✗'} {self.path}: {self.what} (owner {self.owner})"


def examine(cache: Cache, modes: Modes, fix: bool = False) -> list[Finding]:
    out: list[Finding] = []
    root = str(cache.root)
    for dirpath, dirs, files, dfd in os.fwalk(root, follow_symlinks=False):
        rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
        rel_dir = "" if rel_dir == "." else rel_dir
        if rel_dir.startswith(_RUNTIME):
            dirs[:] = []
        _check_dir(out, dirpath, rel_dir, os.stat(dfd), dfd, modes, fix, is_root=not rel_dir)
        for name in [*dirs, *files]:  # fwalk lists a link to a folder among the folders (and skips it)
            rel = f"{rel_dir}/{name}" if rel_dir else name
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            path = os.path.join(dirpath, name)
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(name, dir_fd=dfd)
                if not (_ALIAS.match(rel) and "/" not in target and _ALIAS.match(f"hf/hub/{target}")):
                    out.append(Finding(path, f"a symbolic link to {target!r}, not one hpcft makes", owner_name(st.st_uid)))
            elif stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) & 0o022 and not rel.startswith(_RUNTIME):
                f = Finding(path, f"a file other users can write to (mode {oct(stat.S_IMODE(st.st_mode))})",
                            owner_name(st.st_uid))
                if fix and st.st_uid == ME:
                    f.fixed = _fchmod(dfd, name, stat.S_IMODE(st.st_mode) & ~0o022, is_dir=False)
                out.append(f)
    for path, _data, why in cache.records():
        if why:
            out.append(Finding(str(path), f"a manifest that is not trusted (ignored by every lookup): {why}",
                               owner_name(os.lstat(path).st_uid) if os.path.lexists(path) else "?"))
    return out


def _check_dir(out: list[Finding], path: str, rel: str, st: os.stat_result, dfd: int, modes: Modes, fix: bool,
               is_root: bool) -> None:
    mode = stat.S_IMODE(st.st_mode)
    mine = st.st_uid == ME
    who = owner_name(st.st_uid)
    if _ASSET.match(rel):
        want: Optional[int] = modes.asset_dir if mode & 0o022 else None
        what = "a staged asset's folder that other users can write to (they could add or swap files)"
    elif mode & 0o022 and not mode & stat.S_ISVTX:
        want = mode | stat.S_ISVTX | (stat.S_ISGID if modes.gid is not None else 0)
        what = "a shared folder others can write to without the sticky bit (they could rename or remove your files)"
    else:
        want, what = None, ""
    if want is not None:
        f = Finding(path, f"{what} (mode {oct(mode)})", who)
        if fix and mine:
            os.fchmod(dfd, want)
            f.fixed = True
        out.append(f)
    if modes.gid is not None and st.st_gid != modes.gid and not is_root:
        f = Finding(path, "not in the cache's group (cache_group)", who)
        if fix and mine:
            try:
                os.fchown(dfd, -1, modes.gid)
                f.fixed = True
            except PermissionError:
                pass
        out.append(f)


def _fchmod(dfd: int, name: str, mode: int, is_dir: bool) -> bool:
    try:
        fd = os.open(name, (O_DIR if is_dir else os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC),
                     dir_fd=dfd)
    except OSError:
        return False
    try:
        os.fchmod(fd, mode)
        return True
    finally:
        os.close(fd)
