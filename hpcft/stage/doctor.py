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

from ..core.offline import ensure_private, private_runtime
from ..core.safefs import ME, O_DIR, Modes, owner_name
from ..core.store import Cache
from .layout import OLD_RUNTIME_DIRS

# folders that hold a staged asset (their files are the asset): relative to the cache root
_ASSET = re.compile(r"^(hf/hub/(models|datasets)--[^/]+/snapshots/[^/]+|metrics/[^/]+/[^/]+)(/.*)?$")
_ALIAS = re.compile(r"^hf/hub/(models|datasets)--[^/]+$")
# where an older hpcft let jobs write (datasets' arrow cache, evaluate's and transformers' module
# code, ModelScope, compiled ops): per user now, so whatever is still here is reported, never used
_RUNTIME = OLD_RUNTIME_DIRS


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
        if rel_dir in _RUNTIME:
            out += _old_runtime(dirpath, rel_dir, dfd, [*dirs, *files], fix)
            dirs[:] = []
            continue
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


def _old_runtime(path: str, rel: str, dfd: int, names: list[str], fix: bool) -> list[Finding]:
    """Entries in a run-time cache an older hpcft shared (``hf/modules``...): jobs now use their
    user's own (``$HPCFT_HOME/runtime``), so these are never read; another user's are reported
    (they may be a plant), the caller's own are moved into the caller's runtime folder by --fix
    when everything below them is theirs."""
    out = []
    for name in sorted(names):
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        f = Finding(os.path.join(path, name), f"left in {rel}, a run-time cache that is per user now "
                    "(jobs no longer read it; --fix by its owner moves it to their own)", owner_name(st.st_uid))
        if fix and st.st_uid == ME and _all_mine(dfd, name, st):
            dest = ensure_private(private_runtime() / "moved-from-cache" / rel)
            target = dest / name
            if not os.path.lexists(target):
                try:
                    os.rename(name, target, src_dir_fd=dfd)
                    f.fixed = True
                except OSError as exc:  # another filesystem: left in place, said so
                    f.what += f" (not moved: {exc.strerror})"
        out.append(f)
    return out


def _all_mine(dfd: int, name: str, st: os.stat_result) -> bool:
    if not stat.S_ISDIR(st.st_mode):
        return not stat.S_ISLNK(st.st_mode)
    fd = os.open(name, O_DIR, dir_fd=dfd)
    try:
        for _p, dirs, files, sub in os.fwalk(".", dir_fd=fd, follow_symlinks=False):
            for n in [*dirs, *files]:
                est = os.stat(n, dir_fd=sub, follow_symlinks=False)
                if est.st_uid != ME or stat.S_ISLNK(est.st_mode):
                    return False
    finally:
        os.close(fd)
    return True


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
