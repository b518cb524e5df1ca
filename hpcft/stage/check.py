"""Is everything a job needs staged? Used by ``hpcft submit``/``check`` (pre-flight).

Light: reads manifests only, imports no hub client.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Optional

from ..errors import HpcftError
from ..preflight import Check
from .resolve import AliasTable, is_local, load_table, resolve
from .store import Cache

NAME = "assets staged"


def _local_ok(name: str, base: Optional[Path]) -> bool:
    path = Path(name).expanduser()
    if path.is_absolute() or name.startswith(("./", "../")) and base is None:
        return path.exists()
    if base is not None:
        return (Path(base) / path).exists() or path.exists()
    return True  # relative to a job folder we were not told: the worker's own check decides


def _is_staged(cache: Cache, kind: str, name: str, table: AliasTable, base: Optional[Path] = None) -> bool:
    if is_local(name):
        return _local_ok(name, base)
    try:
        ref = resolve(kind, name, table)
    except HpcftError:
        return False
    if cache.find(kind, name, ref.config if kind == "dataset" else None):
        return True
    if ref.needs_config:  # "glue" alone: any staged config of it will do
        return any(m.get("kind") == "dataset" and m.get("repo_id") == ref.repo_id and Path(m["path"]).is_dir()
                   for m in cache.manifests())
    return cache.find(kind, ref.repo_id, ref.config) is not None


def missing_assets(assets, settings, base: Optional[Path] = None) -> dict[str, list[str]]:
    cache = Cache(settings.cache)
    table = load_table(settings)
    out: dict[str, list[str]] = {"models": [], "datasets": [], "metrics": []}
    for section, kind in (("models", "model"), ("datasets", "dataset"), ("metrics", "metric")):
        for name in getattr(assets, section):
            if name and not _is_staged(cache, kind, name, table, base) and name not in out[section]:
                out[section].append(name)
    return out


def stage_command(assets, settings=None) -> str:
    """The ``hpcft stage ...`` line that stages ``assets`` (an :class:`hpcft.job.Assets`)."""
    table = load_table(settings)
    models, datasets, metrics = list(assets.models), list(assets.datasets), list(assets.metrics)
    preset = set()
    for d in datasets:
        try:
            ref = resolve("dataset", d, table)
        except HpcftError:
            continue
        if ref.metric:
            preset.add(ref.metric)
    parts = ["hpcft", "stage"]
    if len(models) >= 1:
        parts.append(models[0])
        parts += datasets
        parts += [x for m in models[1:] for x in ("--model", m)]
    else:
        parts += [x for d in datasets for x in ("--dataset", d)]
    parts += [x for m in metrics if m not in preset for x in ("--metric", m)]
    return " ".join(shlex.quote(p) for p in parts)


def staged_check(assets, settings, base: Optional[Path] = None) -> Check:
    """ok, or a failure whose message is the exact ``hpcft stage ...`` to run on the login node.

    Local paths count when they exist (relative ones against ``base``, the job file's folder,
    when given). Missing local files cannot be staged: then the message names them.
    """
    missing = missing_assets(assets, settings, base)
    if not any(missing.values()):
        return Check(NAME, True)
    from ..job import Assets

    local = [n for names in missing.values() for n in names if is_local(n)]
    hub = {k: [n for n in v if not is_local(n)] for k, v in missing.items()}
    if any(hub.values()):
        return Check(NAME, False, stage_command(Assets(**hub), settings))
    return Check(NAME, False, "no such file or folder: " + ", ".join(local))


def find_staged(kind: str, name: str, settings) -> Optional[str]:
    """The cache folder for a typed name, or None (for tools and the worker)."""
    cache = Cache(settings.cache)
    table = load_table(settings)
    try:
        ref = resolve(kind, name, table)
    except HpcftError:
        return None
    if ref.local is not None:
        return str(ref.local)
    asset = cache.find(kind, name, ref.config) or cache.find(kind, ref.repo_id, ref.config)
    return str(asset.path) if asset else None
