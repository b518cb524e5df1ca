"""Another user's copy in a shared cache: used only as you last checked it. Light (stdlib).

A member of the cache's group owns what they staged, files *and* manifest, and may rewrite
both at any time. ``hpcft stage`` checks such a copy in full (every file hashed against the
manifest, the manifest against what its mirror lists, no file the mirror does not list:
:func:`hpcft.stage.recheck.check_foreign`) and remembers what it checked in the user's own
``$HPCFT_HOME/checked-assets.json`` as a fingerprint: inode, ctime and size of the manifest and
of every file and folder in the asset's folder (a ctime cannot be set back, and adding a file
changes its folder's). Every later use (``hpcft check``, ``submit``, the job's start on the node)
compares the fingerprint, which costs one ``lstat`` per file: a copy changed since, or never
checked by this user, is refused with one line naming its owner and the command that checks it.
What you or the cache admin (or root) staged is yours to trust and is not fingerprinted.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterable, Optional

from .atomic import atomic_write_json, read_json
from .config import hpcft_home
from .safefs import ME, owner_name

MEMO = "checked-assets.json"
MAX_ENTRIES = 200_000


def memo_path() -> Path:
    return hpcft_home() / MEMO


def is_foreign(owner: int, admins: Iterable[int] = ()) -> bool:
    return owner not in (ME, 0, *admins)


def _entry(st: Optional[os.stat_result]) -> Optional[list]:
    return [st.st_ino, st.st_ctime_ns, st.st_size, stat.S_IFMT(st.st_mode)] if st else None


def fingerprint(folder: Path, manifest_file: str) -> dict:
    """{relative path: [inode, ctime_ns, size, type]} of everything in ``folder`` (links not followed),
    the folder itself as ``.`` and the manifest as ``""``."""
    out: dict = {}
    try:
        out[""] = _entry(os.lstat(manifest_file))
    except OSError:
        out[""] = None
    folder = str(folder)
    try:
        out["."] = _entry(os.lstat(folder))
    except OSError:
        out["."] = None
        return out
    for dirpath, dirs, files, dfd in os.fwalk(folder, follow_symlinks=False):
        rel_dir = os.path.relpath(dirpath, folder)
        for name in [*dirs, *files]:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            try:
                out[rel] = _entry(os.stat(name, dir_fd=dfd, follow_symlinks=False))
            except OSError:
                out[rel] = None
            if len(out) > MAX_ENTRIES:
                out["…"] = "too many entries"
                return out
    return out


def _read() -> dict:
    path = memo_path()
    data = read_json(path, {}) if path.is_file() else {}
    return data if isinstance(data, dict) else {}


def remember(folder: Path, manifest_file: str) -> None:
    """Record that this user checked the asset as it is now (only a memo: on failure, the next
    use asks for a check again)."""
    seen = _read()
    seen[str(manifest_file)] = fingerprint(folder, manifest_file)
    try:
        atomic_write_json(memo_path(), seen, mode=0o600)
    except OSError:
        return


def checked(folder: Path, manifest_file: str) -> bool:
    """Is the asset as this user last checked it?"""
    entry = _read().get(str(manifest_file))
    if not isinstance(entry, dict):
        return False
    return _normal(entry) == _normal(fingerprint(folder, manifest_file))


def _normal(fp: dict) -> dict:
    return {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in fp.items()}


def problem(kind: str, label: str, typed: str, folder: Path, manifest: dict, admins: Iterable[int] = ()) -> str:
    """"" when the copy may be used; else one line saying why not and what to run."""
    owner = manifest.get("_owner", ME)
    if not is_foreign(owner, admins):
        return ""
    if checked(folder, manifest.get("_manifest", "")):
        return ""
    who = owner_name(owner)
    return (f"{kind} {label}: the copy staged by {who} was changed since you checked it, or you never checked "
            f"it; not used. On the login node run `hpcft stage {typed}` (it checks {who}'s copy against the mirror, "
            "or refuses it)")
