"""Is a copy found in the cache still what its manifest says? Checks for ``hpcft stage``.

* :func:`changed_files`: a cheap look at every file (type, size, not modified after the manifest
  was written); a file that fails it is hashed again.
* :func:`check_foreign`: an asset another member of the group staged. Its owner may rewrite its
  files *and* its manifest (both are theirs), so a copy staged by somebody else is hashed in full
  against its manifest and the manifest compared with what the mirror lists for that commit,
  once per user; what was checked is remembered in the user's own ``$HPCFT_HOME`` by inode,
  ctime and size (a ctime cannot be set back), and checked again only when a file changed.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Optional

from ..core.atomic import atomic_write_json, read_json
from ..core.errors import StageError
from ..core.safefs import owner_name
from ..core.store import StagedAsset, sha256_fd
from .http import git_blob_sha1_prefix
from .sources import Source, SourceError


def changed_files(asset: StagedAsset) -> list[str]:
    """Files that no longer match the manifest."""
    try:
        written = os.lstat(asset.manifest["_manifest"]).st_mtime
    except (OSError, KeyError):
        written = None
    out = []
    for f in asset.manifest.get("files", []):
        st = _lstat(asset.path / f["path"])
        if st is None:
            out.append(f"{f['path']}: missing")
        elif not stat.S_ISREG(st.st_mode):
            out.append(f"{f['path']}: not a regular file")
        elif st.st_size != f["size"]:
            out.append(f"{f['path']}: size {st.st_size} != {f['size']}")
        elif (written is None or st.st_mtime > written + 1) and _sha256(asset.path / f["path"]) != f.get("sha256"):
            out.append(f"{f['path']}: sha256 differs")
    return out


def _lstat(path: Path) -> Optional[os.stat_result]:
    try:
        return os.lstat(path)
    except OSError:
        return None


def _sha256(path: Path) -> Optional[str]:
    try:
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as fh:
            return sha256_fd(fh)
    except OSError:
        return None


def _git_oid(path: Path, size: int) -> Optional[str]:
    h = git_blob_sha1_prefix(size)
    try:
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


def _fingerprint(asset: StagedAsset) -> dict:
    out = {}
    for f in asset.manifest.get("files", []):
        st = _lstat(asset.path / f["path"])
        out[f["path"]] = [st.st_ino, st.st_ctime_ns, st.st_size] if st else None
    mst = _lstat(Path(asset.manifest["_manifest"]))
    out[""] = [mst.st_ino, mst.st_ctime_ns, mst.st_size] if mst else None
    return out


def check_foreign(asset: StagedAsset, sources: list[Source], state: Path, typed: str) -> str:
    """Raise StageError when another user's copy is not what the mirror serves; return a note."""
    m = asset.manifest
    who = owner_name(m.get("_owner", -1))
    label = f"{asset.kind} {asset.repo_id}" + (f":{asset.config}" if asset.config else "")
    key = str(m["_manifest"])
    seen = read_json(state, {}) if state.is_file() else {}
    seen = seen if isinstance(seen, dict) else {}
    now = _fingerprint(asset)
    if seen.get(key) == now:
        return ""
    bad = [f["path"] for f in m.get("files", []) if _sha256(asset.path / f["path"]) != f.get("sha256")]
    if bad:
        raise StageError(f"{label}: staged by {who}, but {', '.join(bad[:3])} no longer match its manifest; "
                         f"not used. Ask {who} or the cache admin to run `hpcft cache rm {typed}`, or stage into "
                         "a cache of your own (--cache DIR)")
    note = _against_listing(asset, sources, who, label, typed)
    seen[key] = now
    try:
        atomic_write_json(state, seen, mode=0o600)
    except OSError:
        pass  # only a memo: the next stage checks again
    return note or f"staged by {who}: its {len(m.get('files', []))} files checked against the manifest and " \
                   f"{m.get('source')}'s listing"


def _against_listing(asset: StagedAsset, sources: list[Source], who: str, label: str, typed: str) -> str:
    """Compare the manifest's hashes with what the manifest's own source lists for its commit."""
    m = asset.manifest
    src = next((s for s in sources if s.name == m.get("source")), None)
    if src is None or m.get("source") == "local" or not m.get("sha"):
        return f"staged by {who}: files match its manifest (not re-checked against a mirror: source " \
               f"{m.get('source')!r} is not configured here)"
    from ..core.resolve import AssetRef

    ref = AssetRef(asset.kind, asset.repo_id, typed, config=asset.config)
    try:
        listed = src.listing(ref, m["sha"]).by_path()
    except SourceError as exc:
        return f"staged by {who}: files match its manifest (not re-checked against the mirror: {exc})"
    for f in m.get("files", []):
        theirs = listed.get(f["path"])
        if theirs is None:
            continue
        if theirs.sha256:
            ok = theirs.sha256 == f.get("sha256")
        elif theirs.git_oid:
            ok = _git_oid(asset.path / f["path"], f["size"]) == theirs.git_oid
        else:
            continue
        if not ok:
            raise StageError(f"{label}: staged by {who}, but {f['path']} differs from what {src.name} "
                             f"({src.endpoint}) lists for commit {str(m['sha'])[:12]}; not used. Ask {who} or the "
                             f"cache admin to run `hpcft cache rm {typed}`, or stage into a cache of your own "
                             "(--cache DIR)")
    return ""
