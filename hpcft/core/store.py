"""The shared cache: manifests and lookups. Light (no hub clients, no torch).

Layout under ``Settings.cache``::

    hf/hub/models--ORG--NAME/snapshots/SHA/...     model files (HF hub layout)
    hf/hub/datasets--ORG--NAME/snapshots/SHA/...   dataset card + the staged config's files
    metrics/ORG--NAME/SHA/NAME/...                  evaluate module files (evaluate.load(path) needs
                                                    the folder named like its script)
    manifests/KIND/KEY.json                         one manifest per staged asset
    tmp/                                            downloads in progress (same filesystem)
    locks/                                          one lock per asset

An asset is identified by (kind, repo id, config): ``model google-bert/bert-base-uncased``,
``dataset nyu-mll/glue mrpc``, ``metric evaluate-metric/glue``. A manifest is written
last, atomically: an asset without a manifest is not staged.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

from .. import __version__
from ..offline_shim import hpcft_trust as trust
from .safefs import Dir, Modes

KINDS = ("model", "dataset", "metric")


asset_key = trust.asset_key


@dataclass
class StagedAsset:
    kind: str
    repo_id: str
    config: Optional[str]
    path: Path               # the folder to hand to from_pretrained / load_dataset / evaluate.load
    manifest: dict[str, Any]

    @property
    def names(self) -> list[str]:
        return [self.repo_id, *self.manifest.get("aliases", [])]


class Cache:
    """The cache at ``root``. Manifests are read through :func:`trust.problem`: one that fails it
    (a forged or planted manifest of another group member) is invisible to lookups."""

    def __init__(self, root: Path, admins: Iterable[int] = ()):
        self.root = Path(root).expanduser()
        self.admins = frozenset(admins)

    # ---- locations -------------------------------------------------------
    def manifest_path(self, kind: str, repo_id: str, config: Optional[str] = None) -> Path:
        return self.root / "manifests" / kind / f"{asset_key(kind, repo_id, config)}.json"

    def lock_path(self, kind: str, repo_id: str, config: Optional[str] = None) -> Path:
        return self.root / "locks" / f"{kind}--{asset_key(kind, repo_id, config)}.lock"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    def asset_rel(self, kind: str, repo_id: str, sha: str) -> str:
        """Where an asset's files go, relative to the root (``hf/hub/models--ORG--NAME/snapshots/SHA``)."""
        return trust.asset_rel(kind, repo_id, sha)

    def asset_dir(self, kind: str, repo_id: str, sha: str) -> Path:
        return self.root / self.asset_rel(kind, repo_id, sha)

    # ---- manifests -------------------------------------------------------
    def records(self) -> list[tuple[Path, Any, str]]:
        """Every manifest file: (its path, its data or None, "" if trusted else why not)."""
        out = []
        base = self.root / "manifests"
        for kind in KINDS:
            try:
                names = sorted(os.listdir(base / kind))
            except OSError:
                continue
            for name in names:
                if not name.endswith(".json"):
                    continue
                path = base / kind / name
                data, why = trust.read(str(path))
                out.append((path, data, why or trust.problem(str(self.root), str(path), data, self.admins)))
        return out

    def manifests(self) -> list[dict[str, Any]]:
        """The trusted manifests."""
        return [dict(data, _owner=_uid(path), _manifest=str(path)) for path, data, why in self.records() if not why]

    def load(self, kind: str, repo_id: str, config: Optional[str] = None) -> Optional[StagedAsset]:
        """The asset's own manifest (the one at its key), when it is trusted."""
        try:
            path = self.manifest_path(kind, repo_id, config)
        except (AttributeError, TypeError):
            return None
        data, why = trust.read(str(path))
        if data is None or trust.problem(str(self.root), str(path), data, self.admins):
            return None
        return StagedAsset(kind, data["repo_id"], data.get("config"), Path(data["path"]),
                           dict(data, _owner=_uid(path), _manifest=str(path)))

    def find(self, kind: str, name: str, config: Optional[str] = None) -> Optional[StagedAsset]:
        """By repo id (the manifest at its key), else by an alias recorded at staging time: one
        the caller staged first, then one the cache admin (or root) staged. Another member's
        alias claim is never followed here: they choose the name, so they could claim ``glue``
        for a folder of theirs. Names from hpcft's alias table are resolved to their repo id by
        the caller first (:func:`hpcft.core.assets.lookup`), which is how everybody shares."""
        direct = self.load(kind, name, config)
        if direct:
            return direct
        claims = [m for m in self.manifests()
                  if m["kind"] == kind and (not config or m.get("config") == config) and name in m.get("aliases", [])
                  and trust.rank(m["_owner"], self.admins) < 2]
        claims.sort(key=lambda m: (trust.rank(m["_owner"], self.admins), m["_manifest"]))
        for m in claims:
            found = self.load(kind, m["repo_id"], m.get("config"))
            if found is not None:
                return found
        return None

    def write_manifest(self, kind: str, repo_id: str, config: Optional[str], path: Path, *,
                       source: str, endpoint: Optional[str], revision: Optional[str], sha: str,
                       files: list[dict[str, Any]], aliases: Iterable[str] = (), extra: Optional[dict] = None,
                       modes: Optional[Modes] = None) -> dict[str, Any]:
        import datetime as _dt

        manifest = {
            "kind": kind, "repo_id": repo_id, "config": config, "aliases": sorted(set(aliases) - {repo_id}),
            "source": source, "endpoint": endpoint, "revision": revision, "sha": sha, "path": str(path),
            "files": files, "size": sum(f["size"] for f in files),
            "staged_at": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "hpcft_version": __version__, **{k: v for k, v in (extra or {}).items() if not k.startswith("_")},
        }
        data = (json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n").encode()
        with Dir.open_root(self.root) as root, root.sub(f"manifests/{kind}", create=True,
                                                         modes=modes or Modes()) as folder:
            folder.write_atomic(self.manifest_path(kind, repo_id, config).name, data, modes or Modes())
        return manifest


def admin_uids(settings) -> frozenset:
    """The cache admin (``cache_admin`` in the cluster config), whose copies every user trusts."""
    import pwd

    from .errors import StageError

    name = getattr(settings, "cache_admin", None)
    if not name:
        return frozenset()
    try:
        return frozenset({pwd.getpwnam(name).pw_uid})
    except KeyError:
        raise StageError(f"cache_admin {name!r} is not a user on this machine (check `getent passwd {name}` "
                         "and cache_admin in the hpcft config)") from None


def _uid(path: Path) -> int:
    try:
        return os.lstat(path).st_uid
    except OSError:
        return -1


def sha256_fd(fh, bufsize: int = 1 << 20, limit: Optional[int] = None) -> str:
    """sha256 of what ``fh`` reads; with ``limit``, of at most ``limit + 1`` bytes (a file longer than
    a manifest lists then differs, without reading a planted terabyte to the end)."""
    h = hashlib.sha256()
    left = None if limit is None else limit + 1
    while left is None or left > 0:
        chunk = fh.read(bufsize if left is None else min(bufsize, left))
        if not chunk:
            break
        h.update(chunk)
        if left is not None:
            left -= len(chunk)
    return h.hexdigest()


def sha256_file(path: Path, bufsize: int = 1 << 20, limit: Optional[int] = None) -> str:
    """sha256 of a file, opened without following a link at its last component (and without
    blocking on a FIFO); see :func:`sha256_fd` for ``limit``."""
    with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as fh:
        return sha256_fd(fh, bufsize, limit)
