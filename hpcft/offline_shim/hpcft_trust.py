"""When a manifest in a shared cache may be believed: the one check, for both sides.

Stdlib only: the offline shim imports it on compute nodes (this folder is on the job's
``PYTHONPATH``) and :mod:`hpcft.core.store` imports it on the login node, so the shim,
``assets.lookup``, ``hpcft cache verify`` and ``hpcft cache rm`` all decide alike.

Anybody in the cache's group can write a file into ``manifests/``. A manifest is trusted only
when it is a regular file that nobody but its owner can write, inside the cache, and the folder
it names and every file it lists lie inside the cache (no link on the way) and belong to the
same user as the manifest, or to root, or to the cache admin. A manifest pointing at
``/home/a/evil``, or at another user's folder, is ignored.
"""

from __future__ import annotations

import os
import stat

_BAD_PARTS = ("", ".", "..")


def _inside(root_real: str, root: str, path: str) -> bool:
    """``path`` lies below ``root`` with no symbolic link between them."""
    if not isinstance(path, str) or "\x00" in path:
        return False
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    if rel == "." or rel.startswith(".." + os.sep) or rel == ".." or os.path.isabs(rel):
        return False
    cur = root_real
    for part in rel.split(os.sep):
        cur = os.path.join(cur, part)
        try:
            if stat.S_ISLNK(os.lstat(cur).st_mode):
                return False
        except OSError:
            return False
    return True


def problem(root: str, manifest_file: str, data: object, admins: frozenset = frozenset()) -> str:
    """"" when the manifest can be trusted, else why not (one short phrase)."""
    if not isinstance(data, dict):
        return "not a manifest"
    try:
        st = os.lstat(manifest_file)
    except OSError:
        return "manifest unreadable"
    if not stat.S_ISREG(st.st_mode):
        return "manifest is not a regular file"
    if stat.S_IMODE(st.st_mode) & 0o022:
        return "manifest is writable by other users"
    root_real = os.path.realpath(root)
    if not _inside(root_real, root, manifest_file):
        return "manifest lies outside the cache"
    owners = {st.st_uid, 0, *admins}
    folder = data.get("path")
    if not _inside(root_real, root, folder):
        return f"its folder {folder!r} lies outside the cache (or behind a link)"
    try:
        fst = os.lstat(folder)
    except OSError:
        return "its folder is missing"
    if not stat.S_ISDIR(fst.st_mode) or fst.st_uid not in owners:
        return "its folder belongs to another user"
    files = data.get("files")
    if not isinstance(files, list):
        return "no file list"
    for entry in files:
        rel = entry.get("path") if isinstance(entry, dict) else None
        if not isinstance(rel, str) or rel.startswith("/") or "\x00" in rel or "\\" in rel \
                or any(p in _BAD_PARTS for p in rel.split("/")):
            return f"it lists an unsafe file name {rel!r}"
        try:
            est = os.lstat(os.path.join(folder, rel))
        except OSError:
            continue  # missing: `hpcft cache verify` reports it; nothing to trust or distrust
        if not stat.S_ISREG(est.st_mode):
            return f"{rel} is not a regular file"
        if est.st_uid not in owners:
            return f"{rel} belongs to another user than the manifest"
        if stat.S_IMODE(est.st_mode) & 0o022:
            return f"{rel} is writable by other users"
    return ""


def owner(manifest_file: str) -> int:
    return os.lstat(manifest_file).st_uid
