"""File-system snapshots for "nothing outside X changed" checks.

A snapshot maps every entry under a root (the root itself as ``"."``) to what can be compared
cheaply and exactly: type, permission bits, owner, size and the sha256 of a regular file's bytes,
or a link's target. Links are never followed, so a planted link is recorded as a link and its
target is not read. Tests that attack ``hpcft stage`` (or let two users share a cache) take one
snapshot before and one after, and :func:`diff` says what changed, one line per entry::

    before = snapshot(tmp_path, exclude=[cache])
    ...  # run the attack
    assert not diff(before, snapshot(tmp_path, exclude=[cache]))

Stdlib only; never part of the wheel.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Iterable

__all__ = ["snapshot", "diff", "describe"]

_TYPES = ((stat.S_ISDIR, "dir"), (stat.S_ISREG, "file"), (stat.S_ISLNK, "link"), (stat.S_ISFIFO, "fifo"),
          (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "chardev"), (stat.S_ISBLK, "blockdev"))


def _kind(mode: int) -> str:
    for test, name in _TYPES:
        if test(mode):
            return name
    return "other"


def _sha256(path: str) -> str:
    """The sha256 of a regular file, opened without following a link and without blocking."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:  # another user's private file, or it went away
        return f"unreadable:{exc.errno}"
    h = hashlib.sha256()
    try:
        while chunk := os.read(fd, 1 << 20):
            h.update(chunk)
    except OSError as exc:
        return f"unreadable:{exc.errno}"
    finally:
        os.close(fd)
    return h.hexdigest()


def _entry(path: str, st: os.stat_result) -> tuple:
    kind = _kind(st.st_mode)
    if kind == "file":
        content = _sha256(path)
    elif kind == "link":
        content = os.readlink(path)
    else:
        content = ""
    # a folder's st_size depends on the file system's bookkeeping, not on what it holds
    size = 0 if kind == "dir" else st.st_size
    return (kind, stat.S_IMODE(st.st_mode), size, content, st.st_uid, st.st_gid)


def snapshot(root: Path, exclude: Iterable[Path] = ()) -> dict[str, tuple]:
    """``{relative path: (type, mode, size, sha256 or link target, uid, gid)}`` for ``root`` and
    everything below it, links not followed. ``exclude``: paths (anywhere) left out together
    with everything below them. A missing ``root`` gives ``{}``."""
    root_s = os.path.abspath(root)
    skip = {os.path.abspath(p) for p in exclude}
    out: dict[str, tuple] = {}
    try:
        st = os.lstat(root_s)
    except FileNotFoundError:
        return out
    if root_s in skip:
        return out
    out["."] = _entry(root_s, st)
    if not stat.S_ISDIR(st.st_mode):
        return out
    todo = [root_s]
    while todo:
        folder = todo.pop()
        try:
            with os.scandir(folder) as it:
                names = sorted(e.name for e in it)
        except OSError as exc:  # a folder we may not list: record that, not its contents
            rel = os.path.relpath(folder, root_s)
            kind, mode, size, _, uid, gid = out[rel]
            out[rel] = (kind, mode, size, f"unlistable:{exc.errno}", uid, gid)
            continue
        for name in names:
            path = os.path.join(folder, name)
            if path in skip:
                continue
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            out[os.path.relpath(path, root_s)] = _entry(path, st)
            if stat.S_ISDIR(st.st_mode):
                todo.append(path)
    return out


def describe(entry: tuple) -> str:
    kind, mode, size, content, uid, gid = entry
    what = f"{kind} {mode:04o} {uid}:{gid}"
    if kind == "file":
        what += f" {size} B sha256 {content[:16]}"
    elif kind == "link":
        what += f" -> {content}"
    elif content:
        what += f" ({content})"
    return what


def diff(before: dict[str, tuple], after: dict[str, tuple]) -> list[str]:
    """One line per entry that appeared (``+``), went away (``-``) or changed (``~``), sorted by path."""
    lines = []
    for path in sorted(set(before) | set(after)):
        old, new = before.get(path), after.get(path)
        if old == new:
            continue
        if old is None:
            lines.append(f"+ {path}: {describe(new)}")
        elif new is None:
            lines.append(f"- {path}: was {describe(old)}")
        else:
            lines.append(f"~ {path}: {describe(old)} -> {describe(new)}")
    return lines
