"""Which staged folders a job uses, and the variables script jobs get (light: no torch).

Names are the ones users type (``bert-base-uncased``, ``glue/mrpc``, ``glue``); they
are mapped to (repo id, config) by the staging resolver when it is installed
(:mod:`hpcft.stage.resolve`), else by the alias table :file:`hpcft/stage/aliases.yaml`,
then looked up in the cache with :meth:`hpcft.stage.store.Cache.find`.

:func:`script_env` is what the submit path calls for ``script:`` jobs;
:func:`resolve_train_assets` is what the worker checks before importing anything heavy.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import NotStagedError
from ..stage.store import Cache, StagedAsset

DATA_FILE_SUFFIXES = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet",
                      ".txt": "text"}


@dataclass
class JobAsset:
    """One asset a job needs, as typed and as found."""

    kind: str                     # model | dataset | metric | file
    name: str                     # as the job wrote it
    config: Optional[str] = None
    path: Optional[Path] = None   # the staged (or local) folder/file; None when missing
    repo_id: Optional[str] = None

    @property
    def found(self) -> bool:
        return self.path is not None

    @property
    def typed(self) -> str:
        """The name as `hpcft stage` takes it."""
        if self.kind == "dataset" and self.config:
            return f"{self.name}:{self.config}" if "/" in self.name else f"{self.name}/{self.config}"
        return self.name


# --------------------------------------------------------------------------- name resolution

def _settings():
    try:
        from ..config import load_settings

        return load_settings()
    except Exception:  # noqa: BLE001 - a broken user config must not hide the asset check's own message
        return None


def _typed_ref(kind: str, name: str, config: Optional[str]):
    """The staging resolver's reading of a typed name (repo id + config), or None."""
    try:
        from ..stage.resolve import load_table, resolve
    except ImportError:  # staging not installed in this build
        return None
    from ..errors import HpcftError

    try:
        return resolve(kind, name, load_table(_settings()), config)
    except HpcftError:
        return None


def candidates(kind: str, name: str, config: Optional[str]) -> list[tuple[str, Optional[str]]]:
    """(repo id, config) pairs a typed name may mean, most likely first."""
    base, cfg = name.strip(), config
    if kind == "dataset" and cfg is None and ":" in base:
        base, cfg = base.split(":", 1)
    out = [(base, cfg)]
    ref = _typed_ref(kind, name, config)
    if ref is not None and ref.local is None:
        out.append((ref.repo_id, ref.config if kind == "dataset" else None))
    if kind == "dataset" and cfg is None and "/" in base:
        head, tail = base.rsplit("/", 1)
        out.append((head, tail))       # glue/mrpc when the table does not know glue
    if kind == "metric" and "/" not in base:
        out.append((f"evaluate-metric/{base}", None))
    seen, uniq = set(), []
    for pair in out:
        if pair not in seen:
            seen.add(pair)
            uniq.append(pair)
    return uniq


def find_staged(cache: Cache, kind: str, name: str, config: Optional[str] = None) -> Optional[StagedAsset]:
    for repo_id, cfg in candidates(kind, name, config):
        asset = cache.find(kind, repo_id, cfg)
        if asset is None and cfg is not None and kind == "dataset":
            # a dataset staged without a config still holds every config's files
            asset = cache.find(kind, repo_id, None)
            if asset is not None and asset.config not in (None, cfg):
                asset = None
        if asset is not None:
            return asset
    return None


def split_dataset(name: str, config: Optional[str]) -> tuple[str, Optional[str]]:
    """``glue/mrpc`` -> (glue, mrpc) for a known multi-config dataset; ``a:b`` -> (a, b)."""
    if config:
        return name, config
    if ":" in name:
        a, b = name.split(":", 1)
        return a, b
    ref = _typed_ref("dataset", name, None)
    if ref is not None and ref.config and "/" in name:
        head, tail = name.rsplit("/", 1)
        if tail == ref.config:
            return head, tail
    return name, None


def local_path(value: str, base_dir: Optional[Path]) -> Optional[Path]:
    """A local file or folder the job names (absolute, ./relative, or relative to the job file)."""
    p = Path(value).expanduser()
    looks_local = p.is_absolute() or value.startswith((".", "~")) or p.suffix.lower() in DATA_FILE_SUFFIXES
    for cand in ([p] if p.is_absolute() else [(base_dir or Path.cwd()) / p, Path.cwd() / p]):
        if cand.exists() and (looks_local or (cand / "config.json").is_file() or cand.is_file()):
            return cand.resolve()
    return None


def metric_script(folder: Path, repo_id: str) -> Path:
    """The module file inside a staged metric folder (evaluate.load takes the .py path)."""
    stem = repo_id.rstrip("/").rsplit("/", 1)[-1]
    for cand in (folder / f"{stem}.py", folder / f"{stem.replace('-', '_')}.py"):
        if cand.is_file():
            return cand
    scripts = [p for p in folder.glob("*.py") if p.name != "app.py"]
    return scripts[0] if len(scripts) == 1 else folder


# --------------------------------------------------------------------------- a job's assets

def resolve_train_assets(train, cache: Cache, base_dir: Optional[Path] = None) -> list[JobAsset]:
    """Model, dataset (or data file) and metric of a ``train:`` spec, each found or not."""
    refs: list[JobAsset] = []
    local = local_path(train.model, base_dir)
    if local is not None:
        refs.append(JobAsset("model", train.model, path=local))
    else:
        a = find_staged(cache, "model", train.model)
        refs.append(JobAsset("model", train.model, path=a.path if a else None, repo_id=a.repo_id if a else None))
    local = local_path(train.dataset, base_dir)
    ds_name, ds_config = split_dataset(train.dataset, train.dataset_config)
    if local is not None:
        refs.append(JobAsset("file" if local.is_file() else "dataset", train.dataset, ds_config, path=local))
    elif Path(train.dataset).suffix.lower() in DATA_FILE_SUFFIXES:
        refs.append(JobAsset("file", train.dataset))
    else:
        a = find_staged(cache, "dataset", ds_name, ds_config)
        if a is not None and ds_config is None and a.config:
            ds_config = a.config
        refs.append(JobAsset("dataset", ds_name, ds_config, path=a.path if a else None,
                             repo_id=a.repo_id if a else None))
    if train.metric:
        a = find_staged(cache, "metric", train.metric)
        path = metric_script(a.path, a.repo_id) if a else None
        refs.append(JobAsset("metric", train.metric, path=path, repo_id=a.repo_id if a else None))
    return refs


def stage_command(missing: list[JobAsset]) -> str:
    names = [r.typed for r in missing if r.kind != "file"]
    from ..job import Assets
    from ..stage.check import stage_command as _cmd

    if not names:
        return "hpcft stage"
    assets = Assets(models=[r.name for r in missing if r.kind == "model"],
                    datasets=[r.typed for r in missing if r.kind == "dataset"],
                    metrics=[r.name for r in missing if r.kind == "metric"])
    return _cmd(assets, _settings())


def require(refs: list[JobAsset]) -> None:
    """Raise NotStagedError naming every missing asset and the exact command to stage them."""
    missing = [r for r in refs if not r.found]
    if not missing:
        return
    lines = []
    files = [r for r in missing if r.kind == "file"]
    staged = [r for r in missing if r.kind != "file"]
    if staged:
        what = ", ".join(f"{r.kind} {r.typed}" for r in staged)
        lines.append(f"not staged in the hpcft cache: {what}")
        lines.append(f"on the login node run: {stage_command(staged)}")
    for r in files:
        lines.append(f"data file not found: {r.name}")
    raise NotStagedError("\n".join(lines))


# --------------------------------------------------------------------------- script jobs

def script_env(job, settings) -> dict[str, str]:
    """``HPCFT_MODEL_PATH``/``HPCFT_DATASET_PATH``/``HPCFT_METRIC_PATH`` (+ ``HPCFT_DATASET_CONFIG``
    and ``HPCFT_ASSETS``, a JSON map name -> path) for the assets a job lists. Missing assets
    are left out (the submit-time asset check reports them)."""
    cache = Cache(settings.cache)
    assets = job.all_assets()
    env: dict[str, str] = {}
    table: dict[str, str] = {}
    for kind, names in (("model", assets.models), ("dataset", assets.datasets), ("metric", assets.metrics)):
        for name in names:
            if kind == "dataset":
                base, cfg = split_dataset(name, getattr(job.train, "dataset_config", None) if job.train else None)
            else:
                base, cfg = name, None
            a = find_staged(cache, kind, base, cfg)
            if a is None:
                continue
            path = metric_script(a.path, a.repo_id) if kind == "metric" else a.path
            table[name] = str(path)
            key = f"HPCFT_{kind.upper()}_PATH"
            if key not in env:
                env[key] = str(path)
                if kind == "dataset" and (cfg or a.config):
                    env["HPCFT_DATASET_CONFIG"] = cfg or a.config
    if table:
        env["HPCFT_ASSETS"] = json.dumps(table, sort_keys=True)
    return env


def cache_root() -> Path:
    """The cache the job was submitted against (exported by the batch script / launch.json)."""
    env = os.environ.get("HPCFT_CACHE")
    if env:
        return Path(env)
    from ..config import load_settings

    return load_settings().cache
