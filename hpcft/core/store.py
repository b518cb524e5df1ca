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
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

from .. import __version__
from ..offline_shim import hpcft_trust as trust
from .safefs import Dir, Modes

KINDS = ("model", "dataset", "metric")


def asset_key(kind: str, repo_id: str, config: Optional[str] = None) -> str:
    safe = repo_id.strip("/").replace("/", "--")
    return f"{safe}@{config}" if (kind == "dataset" and config) else safe


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
        safe = repo_id.strip("/").replace("/", "--")
        if kind == "metric":
            return f"metrics/{safe}/{sha}/{repo_id.strip('/').split('/')[-1]}"
        return f"hf/hub/{kind}s--{safe}/snapshots/{sha}"

    def asset_dir(self, kind: str, repo_id: str, sha: str) -> Path:
        return self.root / self.asset_rel(kind, repo_id, sha)

    # ---- manifests -------------------------------------------------------
    def records(self) -> list[tuple[Path, Any, str]]:
        """Every manifest file: (its path, its data, "" if trusted else why not)."""
        out = []
        base = self.root / "manifests"
        for kind in KINDS:
            for path in sorted((base / kind).glob("*.json")) if (base / kind).is_dir() else []:
                data = _read_manifest(path)
                out.append((path, data, trust.problem(str(self.root), str(path), data, self.admins)
                            if data is not None else "not valid JSON, or not a regular file"))
        return out

    def manifests(self) -> list[dict[str, Any]]:
        """The trusted manifests."""
        return [dict(data, _owner=_uid(path), _manifest=str(path)) for path, data, why in self.records() if not why]

    def load(self, kind: str, repo_id: str, config: Optional[str] = None) -> Optional[StagedAsset]:
        path = self.manifest_path(kind, repo_id, config)
        data = _read_manifest(path)
        if not isinstance(data, dict) or trust.problem(str(self.root), str(path), data, self.admins):
            return None
        return StagedAsset(kind, data["repo_id"], data.get("config"), Path(data["path"]),
                           dict(data, _owner=_uid(path), _manifest=str(path)))

    def find(self, kind: str, name: str, config: Optional[str] = None) -> Optional[StagedAsset]:
        """By repo id or by any alias recorded at staging time."""
        direct = self.load(kind, name, config)
        if direct:
            return direct
        for data in self.manifests():
            if data.get("kind") != kind or (config and data.get("config") != config):
                continue
            if name == data.get("repo_id") or name in data.get("aliases", []):
                return self.load(kind, data["repo_id"], data.get("config"))
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


def _read_manifest(path: Path) -> Any:
    """A manifest's JSON, opened without following a link (a planted link reads as no manifest)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                return None
            return json.loads(fh.read(16 << 20))
    except (OSError, ValueError):
        return None


def _uid(path: Path) -> int:
    try:
        return os.lstat(path).st_uid
    except OSError:
        return -1


def sha256_fd(fh, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    while chunk := fh.read(bufsize):
        h.update(chunk)
    return h.hexdigest()


def sha256_file(path: Path, bufsize: int = 1 << 20) -> str:
    """sha256 of a file, opened without following a link at its last component."""
    with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as fh:
        return sha256_fd(fh, bufsize)
