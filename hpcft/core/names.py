"""The one validator for every name that becomes part of a path in the cache.

Names come from people (repo ids, dataset configs, revisions typed on the command line or in a
job file) and from mirrors (file names in a listing, the commit a revision resolves to, the
canonical id a hub answers with). A mirror is a third party: a listing entry ``../../x``, ``/abs``
or a commit id ``111/../../outside`` must never reach the file system. Everything that will be
joined onto a cache path goes through one function here first; anything else is refused with
one line that names the bad value and where it came from. Light: stdlib only.
"""

from __future__ import annotations

import re
from typing import Optional

from .errors import StageError

MAX_PATH = 1024          # a whole relative path inside a repo
MAX_PART = 255           # one component (the Linux NAME_MAX)
MAX_ID_PART = 96         # the Hub's own limit for an org or repo name
_ID_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_CONFIG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")
_HEX40 = re.compile(r"[0-9a-f]{40}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_CTRL = re.compile(r"[\x00-\x1f\x7f]")
# git check-ref-format, the rules every hub's branch and tag names follow
_BAD_REF = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//|/\.|\.lock(/|$)")


class UnsafeName(StageError):
    """A name that would leave its folder or that no hub would produce."""


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 90 else text[:87] + "..."


def rel_path(name: object, what: str) -> str:
    """A relative path inside a repo, as a listing names it: no ``..``, no leading ``/``, no NUL,
    no backslash, no empty or ``.`` parts, no control characters, bounded length."""
    problem = None
    if not isinstance(name, str) or not name:
        problem = "not a non-empty string"
    elif len(name.encode("utf-8", "surrogatepass")) > MAX_PATH:
        problem = f"longer than {MAX_PATH} bytes"
    elif _CTRL.search(name):
        problem = "contains a NUL or control character"
    elif "\\" in name:
        problem = "contains a backslash"
    elif name.startswith("/"):
        problem = "is absolute"
    else:
        parts = name.split("/")
        if any(p in ("", ".", "..") for p in parts):
            problem = "has an empty, '.' or '..' component"
        elif any(len(p.encode("utf-8", "surrogatepass")) > MAX_PART for p in parts):
            problem = f"has a component longer than {MAX_PART} bytes"
    if problem:
        raise UnsafeName(f"{what}: unsafe file name {_show(name)} ({problem}); refused, nothing was written")
    return name  # type: ignore[return-value]


def repo_id(value: object, what: str, *, parts: tuple[int, ...] = (1, 2)) -> str:
    """``org/name`` (or a legacy one-part id such as ``bert-base-uncased``): each part letters,
    digits, ``_ . -``, not starting with ``.`` or ``-``, no ``--`` or ``..`` (the Hub's rules;
    ``--`` is also the cache's separator, so allowing it would let two ids share a folder)."""
    ok = isinstance(value, str) and value.count("/") + 1 in parts
    if ok:
        for part in value.split("/"):  # type: ignore[union-attr]
            if not _ID_PART.fullmatch(part) or ".." in part or "--" in part or len(part) > MAX_ID_PART \
                    or part.endswith("."):
                ok = False
    if not ok:
        raise UnsafeName(f"{what}: {_show(value)} is not a valid repo id (org/name: letters, digits, '_', '.', "
                         f"'-'; no '..' or '--'; at most {MAX_ID_PART} characters each)")
    return value  # type: ignore[return-value]


def config_name(value: object, what: str) -> str:
    if not isinstance(value, str) or not _CONFIG.fullmatch(value) or ".." in value or len(value) > 128:
        raise UnsafeName(f"{what}: {_show(value)} is not a valid dataset config name (letters, digits, "
                         "'_', '.', '+', '-'; no '..')")
    return value


def revision(value: object, what: str) -> str:
    """A branch, tag or commit as git allows them (``refs/<name>`` becomes a file in the cache)."""
    if not isinstance(value, str) or not value or len(value) > 200 or _BAD_REF.search(value) \
            or value.startswith(("/", "-", ".")) or value.endswith(("/", ".")):
        raise UnsafeName(f"{what}: {_show(value)} is not a valid revision (a branch, tag or commit id)")
    rel_path(value, what)
    return value


def commit(value: object, source: str, what: str) -> str:
    """The commit a revision resolved to: 40 lowercase hex on every hub we speak to (HF and Modelers
    document it so; ModelScope's repos are git repos and answer with the same git ids)."""
    if not isinstance(value, str) or not _HEX40.fullmatch(value):
        raise UnsafeName(f"{what}: {source} answered with the commit id {_show(value)}, not 40 hex "
                         "characters; refused, nothing was written")
    return value


def sha256(value: object) -> Optional[str]:
    """A listed sha256, or None when it is absent or not 64 hex (then the file is unverified)."""
    if isinstance(value, str) and _HEX64.fullmatch(value.lower()):
        return value.lower()
    return None


def git_oid(value: object) -> Optional[str]:
    if isinstance(value, str) and _HEX40.fullmatch(value.lower()):
        return value.lower()
    return None


def size(value: object, what: str, path: str) -> int:
    try:
        n = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        n = -1
    if isinstance(value, bool) or n < 0:
        raise UnsafeName(f"{what}: the file list gives {path!r} the size {_show(value)}; refused")
    return n


def local_id(folder_name: str) -> str:
    """``local/NAME`` for a folder the user stages from disk: NAME made safe for the cache."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", folder_name).strip("._-")
    safe = re.sub(r"-{2,}", "-", re.sub(r"\.{2,}", ".", safe))[:MAX_ID_PART] or "folder"
    if not safe[0].isalnum():
        safe = "x" + safe
    return f"local/{safe}"
