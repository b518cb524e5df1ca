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
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

from .. import __version__
from ..atomic import atomic_write_json, file_lock, read_json

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
    def __init__(self, root: Path):
        self.root = Path(root).expanduser()

    # ---- locations -------------------------------------------------------
    def manifest_path(self, kind: str, repo_id: str, config: Optional[str] = None) -> Path:
        return self.root / "manifests" / kind / f"{asset_key(kind, repo_id, config)}.json"

    def lock_path(self, kind: str, repo_id: str, config: Optional[str] = None) -> Path:
        return self.root / "locks" / f"{kind}--{asset_key(kind, repo_id, config)}.lock"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    def asset_dir(self, kind: str, repo_id: str, sha: str) -> Path:
        safe = repo_id.strip("/").replace("/", "--")
        if kind == "metric":
            return self.root / "metrics" / safe / sha / repo_id.strip("/").split("/")[-1]
        return self.root / "hf" / "hub" / f"{kind}s--{safe}" / "snapshots" / sha

    # ---- manifests -------------------------------------------------------
    def manifests(self) -> list[dict[str, Any]]:
        out = []
        base = self.root / "manifests"
        for kind in KINDS:
            for path in sorted((base / kind).glob("*.json")) if (base / kind).is_dir() else []:
                data = read_json(path)
                if isinstance(data, dict):
                    out.append(data)
        return out

    def load(self, kind: str, repo_id: str, config: Optional[str] = None) -> Optional[StagedAsset]:
        data = read_json(self.manifest_path(kind, repo_id, config))
        if not isinstance(data, dict):
            return None
        path = Path(data["path"])
        if not path.is_dir():
            return None
        return StagedAsset(kind, data["repo_id"], data.get("config"), path, data)

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
                       files: list[dict[str, Any]], aliases: Iterable[str] = (), extra: Optional[dict] = None
                       ) -> dict[str, Any]:
        import datetime as _dt

        manifest = {
            "kind": kind, "repo_id": repo_id, "config": config, "aliases": sorted(set(aliases) - {repo_id}),
            "source": source, "endpoint": endpoint, "revision": revision, "sha": sha, "path": str(path),
            "files": files, "size": sum(f["size"] for f in files),
            "staged_at": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "hpcft_version": __version__, **(extra or {}),
        }
        atomic_write_json(self.manifest_path(kind, repo_id, config), manifest)
        return manifest


def sha256_file(path: Path, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def file_entries(folder: Path) -> list[dict[str, Any]]:
    entries = []
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.is_symlink():
            entries.append({"path": p.relative_to(folder).as_posix(), "size": p.stat().st_size,
                            "sha256": sha256_file(p)})
    return entries


def register_local(cache: Cache, kind: str, repo_id: str, folder: Path, *, config: Optional[str] = None,
                   aliases: Iterable[str] = (), source: str = "local") -> StagedAsset:
    """Stage a local folder (a model dir, a dataset folder, a metric module) under a name.

    Copied into a temporary folder inside the cache, hashed, renamed into place,
    then the manifest is written: a crash at any point leaves nothing visible as staged.
    """
    folder = Path(folder)
    with file_lock(cache.lock_path(kind, repo_id, config)):
        cache.tmp.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=cache.tmp))
        try:
            staging = tmp / "files"
            shutil.copytree(folder, staging, symlinks=False)
            files = file_entries(staging)
            sha = hashlib.sha256("".join(f"{f['path']}:{f['sha256']}" for f in files).encode()).hexdigest()[:40]
            final = cache.asset_dir(kind, repo_id, sha)
            if not final.is_dir():
                final.parent.mkdir(parents=True, exist_ok=True)
                for p in staging.rglob("*"):
                    os.chmod(p, 0o755 if p.is_dir() else 0o644)
                os.replace(staging, final)
            manifest = cache.write_manifest(kind, repo_id, config, final, source=source, endpoint=None,
                                            revision=None, sha=sha, files=files, aliases=aliases,
                                            extra={"local_source": str(folder.resolve())})
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return StagedAsset(kind, repo_id, config, final, manifest)
