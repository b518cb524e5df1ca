"""Is a copy found in the cache still what its manifest says? Checks for ``hpcft stage``.

* :func:`changed_files`: a cheap look at every file (type, size, not modified after the manifest
  was written); a file that fails it is hashed again.
* :func:`check_foreign`: an asset another member of the group staged. Its owner may rewrite its
  files *and* its manifest (both are theirs), so a copy staged by somebody else is hashed in full
  against its manifest, its folder must hold nothing else, and the manifest must match what the
  mirror lists for that commit, once per user; what was checked is remembered in the user's own
  ``$HPCFT_HOME`` (:mod:`hpcft.core.foreign`), which every later use compares.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Optional

from ..core import foreign
from ..core.errors import StageError
from ..core.safefs import owner_name
from ..core.store import Cache, StagedAsset, sha256_fd
from .cards import REPOYAML, repo_yaml
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
        elif (written is None or st.st_mtime > written + 1) and _sha256(asset.path / f["path"], f["size"]) != f.get("sha256"):
            out.append(f"{f['path']}: sha256 differs")
    return out


def _lstat(path: Path) -> Optional[os.stat_result]:
    try:
        return os.lstat(path)
    except OSError:
        return None


def _sha256(path: Path, limit: Optional[int] = None) -> Optional[str]:
    try:
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as fh:
            return sha256_fd(fh, limit=limit)
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


def check_foreign(asset: StagedAsset, sources: list[Source], cache: Cache, typed: str) -> str:
    """Raise StageError when another user's copy is not exactly what the mirror serves; return a note.

    Refused when: a file no longer matches its manifest; the folder holds a file no manifest of
    theirs lists (a ``from_pretrained`` would load an added ``adapter_config.json``); the manifest
    lists a file the mirror does not, or hashes one differently; or the mirror cannot be asked
    (source ``local``, a source not configured here, unreachable). Accepted copies are remembered
    (:mod:`hpcft.core.foreign`), so ``check``, ``submit`` and the job compare a fingerprint only."""
    m = asset.manifest
    who = owner_name(m.get("_owner", -1))
    label = f"{asset.kind} {asset.repo_id}" + (f":{asset.config}" if asset.config else "")
    manifest_file = str(m["_manifest"])
    if foreign.checked(asset.path, manifest_file):
        return ""

    def refuse(why: str) -> StageError:
        return StageError(f"{label}: staged by {who}, but {why}; not used. Ask {who} or the cache admin to run "
                          f"`hpcft cache rm {typed}`, or stage into a cache of your own (--cache DIR)")

    bad = [f["path"] for f in m.get("files", []) if _sha256(asset.path / f["path"], f["size"]) != f.get("sha256")]
    if bad:
        raise refuse(f"{', '.join(bad[:3])} no longer match its manifest")
    extra = unlisted_files(asset, cache)
    if extra:
        raise refuse(f"its folder holds {', '.join(extra[:3])}, which no manifest of theirs lists")
    _against_listing(asset, sources, refuse)
    foreign.remember(asset.path, manifest_file)
    return f"staged by {who}: its {len(m.get('files', []))} files checked against the manifest and " \
           f"{m.get('source')}'s listing"


def unlisted_files(asset: StagedAsset, cache: Cache) -> list[str]:
    """Files in the asset's folder that no trusted manifest of its owner for that folder lists
    (``.huggingface.yaml`` counts as listed when it is exactly what hpcft writes for the folder)."""
    owner = asset.manifest.get("_owner")
    listed = {f["path"] for o in cache.manifests() if o.get("path") == str(asset.path) and o.get("_owner") == owner
              for f in o.get("files", [])}
    out = []
    for dirpath, _dirs, files, _dfd in os.fwalk(asset.path, follow_symlinks=False):
        rel_dir = os.path.relpath(dirpath, asset.path)
        for name in files:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if rel in listed:
                continue
            if rel == REPOYAML and asset.kind == "dataset" and _repo_yaml_is_ours(asset.path):
                continue
            out.append(rel)
    return sorted(out)


def _repo_yaml_is_ours(folder: Path) -> bool:
    try:
        with os.fdopen(os.open(folder / REPOYAML, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as fh:
            have = fh.read(1 << 20)
        readme = b""
        if (folder / "README.md").is_file() and not (folder / "README.md").is_symlink():
            readme = (folder / "README.md").read_bytes()[: 16 << 20]
    except OSError:
        return False
    paths = [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and not p.is_symlink()]
    return repo_yaml(readme.decode("utf-8", "replace"), paths) == have


def _against_listing(asset: StagedAsset, sources: list[Source], refuse) -> None:
    """The manifest's files and hashes are what the manifest's own source lists for its commit."""
    m = asset.manifest
    src = next((s for s in sources if s.name == m.get("source")), None)
    if m.get("source") == "local":
        raise refuse("it was staged from a local folder, which no mirror can vouch for")
    if src is None:
        raise refuse(f"its source {m.get('source')!r} is not configured here, so it cannot be checked")
    from ..core.resolve import AssetRef

    ref = AssetRef(asset.kind, asset.repo_id, asset.repo_id, config=asset.config)
    try:
        listed = src.listing(ref, m["sha"]).by_path()
    except SourceError as exc:
        raise refuse(f"{src.name} cannot be asked about it ({exc})") from None
    for f in m.get("files", []):
        theirs = listed.get(f["path"])
        if theirs is None:
            raise refuse(f"its manifest lists {f['path']}, which {src.name} does not list for commit "
                         f"{str(m['sha'])[:12]}")
        if theirs.sha256:
            ok = theirs.sha256 == f.get("sha256")
        elif theirs.git_oid:
            ok = _git_oid(asset.path / f["path"], f["size"]) == theirs.git_oid
        else:
            raise refuse(f"{src.name} lists no hash for {f['path']}")
        if not ok:
            raise refuse(f"{f['path']} differs from what {src.name} ({src.endpoint}) lists for commit "
                         f"{str(m['sha'])[:12]}")
