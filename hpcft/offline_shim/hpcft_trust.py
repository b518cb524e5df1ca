"""When a manifest in a shared cache may be believed: the one check, for both sides.

Stdlib only: the offline shim imports it on compute nodes (this folder is on the job's
``PYTHONPATH``) and :mod:`hpcft.core.store` imports it on the login node, so the shim,
``assets.lookup``, ``hpcft cache verify`` and ``hpcft cache rm`` all decide alike.

Anybody in the cache's group can write a file into ``manifests/``. A manifest is trusted only when

* it reads as a manifest: a regular file (opened without following a link) of at most 16 MB,
  JSON nested no deeper than a manifest is, with the schema :func:`schema_problem` checks;
* it is **bound to its asset**: its file name is the asset's key
  (``manifests/dataset/nyu-mll--glue@mrpc.json`` for ``nyu-mll/glue`` config ``mrpc``) and the
  folder it names is that asset's own snapshot folder (``hf/hub/datasets--nyu-mll--glue/
  snapshots/SHA``; for a dataset also ``SHA.uUID`` of the manifest's owner), so one asset has one
  manifest and a manifest cannot name a shared folder such as ``hf/hub``;
* nobody but its owner can write it, and the folder and every file it lists lie inside the cache
  with no link on the way, belong to the manifest's owner, are not writable by others, and (for
  another user's copy) each file has one name (a hard link could be another file's second name).

Everything here returns a reason ("" when trusted) and never raises on what a group member wrote.
"""

from __future__ import annotations

import json
import os
import re
import stat

KINDS = ("model", "dataset", "metric")
MAX_MANIFEST = 16 << 20
MAX_FILES = 100_000
MAX_ALIASES = 256
_BAD_PARTS = ("", ".", "..")
_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,95}(/[A-Za-z0-9_][A-Za-z0-9_.-]{0,95})?")
_CONFIG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}")
_SHA = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def asset_key(kind: str, repo_id: str, config=None) -> str:
    """The name of an asset's manifest (without ``.json``)."""
    safe = repo_id.strip("/").replace("/", "--")
    return f"{safe}@{config}" if (kind == "dataset" and config) else safe


def asset_rel(kind: str, repo_id: str, sha: str) -> str:
    """An asset's own folder, relative to the cache root."""
    safe = repo_id.strip("/").replace("/", "--")
    if kind == "metric":
        return f"metrics/{safe}/{sha}/{repo_id.strip('/').split('/')[-1]}"
    return f"hf/hub/{kind}s--{safe}/snapshots/{sha}"


def read(path: str):
    """(data, "") for a manifest file that reads as one, else (None, why). Never follows a link,
    never blocks on a FIFO, reads at most 16 MB, survives any nesting depth."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        return None, "a symbolic link" if os.path.islink(path) else f"unreadable ({exc.strerror})"
    try:
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                return None, "not a regular file"
            raw = fh.read(MAX_MANIFEST + 1)
    except OSError as exc:
        return None, f"unreadable ({exc.strerror})"
    if len(raw) > MAX_MANIFEST:
        return None, f"larger than {MAX_MANIFEST >> 20} MB"
    try:
        data = json.loads(raw)  # a nesting past the recursion limit raises RecursionError, at once
    except RecursionError:
        return None, "nested deeper than any manifest is"
    except ValueError:
        return None, "not valid JSON"
    why = schema_problem(data)
    return (None, why) if why else (data, "")


def _opt_str(v) -> bool:
    return v is None or (isinstance(v, str) and len(v) <= 4096)


def schema_problem(data) -> str:
    """"" when ``data`` has a manifest's shape, else the first thing wrong with it."""
    if not isinstance(data, dict):
        return "not a JSON object"
    kind, rid, cfg = data.get("kind"), data.get("repo_id"), data.get("config")
    if kind not in KINDS:
        return f"kind {str(kind)[:40]!r} is not one of {', '.join(KINDS)}"
    if not isinstance(rid, str) or not _ID.fullmatch(rid):
        return "repo_id is missing or not an org/name id"
    if cfg is not None and not (isinstance(cfg, str) and _CONFIG.fullmatch(cfg)):
        return "config is not a plain name"
    if not isinstance(data.get("sha"), str) or not _SHA.fullmatch(data["sha"]):
        return "sha is missing or not a plain name"
    if not isinstance(data.get("path"), str) or "\x00" in data["path"]:
        return "path is missing"
    aliases = data.get("aliases", [])
    if not isinstance(aliases, list) or len(aliases) > MAX_ALIASES \
            or not all(isinstance(a, str) and 0 < len(a) <= 200 for a in aliases):
        return "aliases is not a list of names"
    for key in ("source", "endpoint", "revision", "staged_at", "hpcft_version"):
        if not _opt_str(data.get(key)):
            return f"{key} is not a string"
    files = data.get("files")
    if not isinstance(files, list) or len(files) > MAX_FILES:
        return "files is not a list"
    for entry in files:
        if not isinstance(entry, dict):
            return "a files entry is not an object"
        rel, size, digest = entry.get("path"), entry.get("size"), entry.get("sha256")
        if not isinstance(rel, str) or not rel or rel.startswith("/") or "\x00" in rel or "\\" in rel \
                or any(p in _BAD_PARTS for p in rel.split("/")):
            return f"it lists an unsafe file name {str(rel)[:80]!r}"
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            return f"{rel}: size is not a whole number of bytes"
        if not (isinstance(digest, str) and _HEX64.fullmatch(digest)):
            return f"{rel}: sha256 is not 64 hex digits"
    if isinstance(data.get("size"), bool) or not isinstance(data.get("size", 0), int):
        return "size is not a whole number"
    return ""


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


def bound_problem(root: str, manifest_file: str, data: dict, uid: int) -> str:
    """"" when the manifest sits at its asset's key and names its asset's own folder."""
    kind, rid, cfg = data["kind"], data["repo_id"], data.get("config")
    want = os.path.join(os.path.abspath(root), "manifests", kind, asset_key(kind, rid, cfg) + ".json")
    if os.path.abspath(manifest_file) != want:
        return f"its file name is not its asset's key ({asset_key(kind, rid, cfg)}.json)"
    own = asset_rel(kind, rid, data["sha"])
    allowed = {own, f"{own}.u{uid}"} if kind == "dataset" else {own}
    rel = os.path.relpath(os.path.abspath(data["path"]), os.path.abspath(root)).replace(os.sep, "/")
    if rel not in allowed:
        return f"its folder {data['path']!r} is not {kind} {rid}'s own snapshot folder ({own})"
    return ""


def problem(root: str, manifest_file: str, data: object, admins: frozenset = frozenset()) -> str:
    """"" when the manifest can be trusted, else why not (one short phrase). ``admins`` is kept for
    callers' sake: what an admin staged is trusted because the admin owns it, like anyone's."""
    if not isinstance(data, dict):
        return "not a manifest"
    why = schema_problem(data)
    if why:
        return why
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
    folder = data["path"]
    if not _inside(root_real, root, folder):
        return f"its folder {folder!r} lies outside the cache (or behind a link)"
    why = bound_problem(root, manifest_file, data, st.st_uid)
    if why:
        return why
    try:
        fst = os.lstat(folder)
    except OSError:
        return "its folder is missing"
    if not stat.S_ISDIR(fst.st_mode) or fst.st_uid != st.st_uid:
        return "its folder belongs to another user than the manifest"
    if stat.S_IMODE(fst.st_mode) & 0o022:
        return "its folder is writable by other users"
    for entry in data["files"]:
        rel = entry["path"]
        try:
            est = os.lstat(os.path.join(folder, rel))
        except OSError:
            continue  # missing: `hpcft cache verify` reports it; nothing to trust or distrust
        if not stat.S_ISREG(est.st_mode):
            return f"{rel} is not a regular file"
        if est.st_uid != st.st_uid:
            return f"{rel} belongs to another user than the manifest"
        if stat.S_IMODE(est.st_mode) & 0o022:
            return f"{rel} is writable by other users"
        if est.st_nlink != 1 and st.st_uid != os.getuid():
            # a second name elsewhere lets its owner rewrite it unseen in the cache; your own files
            # you trust (another user can add a name to them only where the kernel allows it, and
            # still cannot write them)
            return f"{rel} has {est.st_nlink} names (a hard link)"
    return ""


def owner(manifest_file: str) -> int:
    return os.lstat(manifest_file).st_uid


def rank(uid: int, admins=frozenset()) -> int:
    """Lookup order among manifests that claim a name as an alias: the caller's own (0), then
    the admin's or root's (1); anybody else's (2) only where the caller's name table agrees."""
    if uid == os.getuid():
        return 0
    return 1 if uid == 0 or uid in admins else 2
