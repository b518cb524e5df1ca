"""Which staged (or local) folders a job uses: the one lookup, for both sides.

The submit-time pre-flight (:func:`hpcft.preflight.checks.staged_check`) and the worker
(:mod:`hpcft.worker.runtime`, before anything heavy is imported) call the same functions
here, so a job that passes the check finds exactly the same folders on the node.

Names are the ones users type (``bert-base-uncased``, ``glue/mrpc``, ``glue``, ``./data.csv``);
the alias table (:mod:`hpcft.core.resolve`) maps them to (repo id, config), and the cache's
manifests (:class:`hpcft.core.store.Cache`) say where each staged copy is. Light: no hub
client, no torch.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from . import foreign
from .errors import HpcftError, NotStagedError
from .resolve import DATA_FILE_EXT, DATA_FILE_SUFFIXES, AliasTable, resolve
from .store import Cache, StagedAsset

__all__ = ["DATA_FILE_SUFFIXES", "JobAsset", "job_assets", "lookup", "problems", "require", "script_env",
           "stage_command"]


@dataclass
class JobAsset:
    """One asset a job needs, as typed and as found."""

    kind: str                     # model | dataset | metric | file (a local data file)
    name: str                     # as the job wrote it
    config: Optional[str] = None
    path: Optional[Path] = None   # the staged (or local) folder/file; None when missing
    repo_id: Optional[str] = None
    local: bool = False           # a path the job names, not a hub id: it cannot be staged
    refused: str = ""             # staged, but another user's copy not as you checked it (core.foreign)
    foreign: Optional[tuple[str, str]] = None  # another user's copy, as you checked it: (folder, its manifest)

    @property
    def found(self) -> bool:
        return self.path is not None

    @property
    def typed(self) -> str:
        """The name as `hpcft stage` takes it."""
        if self.kind == "dataset" and self.config and not self.name.endswith(self.config):
            return f"{self.name}:{self.config}" if "/" in self.name else f"{self.name}/{self.config}"
        return self.name


# --------------------------------------------------------------------------- one asset

def _path_syntax(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name in (".", "..") \
        or name.lower().endswith(DATA_FILE_EXT)


def local_path(kind: str, name: str, base_dir: Optional[Path]) -> tuple[bool, Optional[Path]]:
    """(is this name a local path?, the existing file/folder or None).

    Path syntax (absolute, ``./``, ``~``, a data file suffix) always means local; a bare name
    means local only when it exists as a file, or as a model folder with ``config.json``.
    Relative names resolve against the job file's folder first, then the working directory."""
    p = Path(name).expanduser()
    syntax = _path_syntax(name)
    for cand in ([p] if p.is_absolute() else [(base_dir or Path.cwd()) / p, Path.cwd() / p]):
        if cand.exists() and (syntax or cand.is_file() or (kind == "model" and (cand / "config.json").is_file())):
            return True, cand.resolve()
    return syntax, None


def metric_script(folder: Path, repo_id: str) -> Path:
    """The module file inside a staged metric folder (evaluate.load takes the .py path)."""
    stem = repo_id.rstrip("/").rsplit("/", 1)[-1]
    for cand in (folder / f"{stem}.py", folder / f"{stem.replace('-', '_')}.py"):
        if cand.is_file():
            return cand
    scripts = [p for p in folder.glob("*.py") if p.name != "app.py"]
    return scripts[0] if len(scripts) == 1 else folder


def _any_config(cache: Cache, repo_id: str) -> Optional[StagedAsset]:
    for m in cache.manifests():
        if m.get("kind") == "dataset" and m.get("repo_id") == repo_id:
            found = cache.load("dataset", repo_id, m.get("config"))
            if found is not None:
                return found
    return None


def _find_staged(cache: Cache, kind: str, name: str, config: Optional[str],
                 table: AliasTable) -> tuple[Optional[StagedAsset], Optional[str]]:
    """The staged copy of a hub name (or None), and the config it resolved to."""
    base, cfg = name, config
    if kind == "dataset" and cfg is None and ":" in base:
        base, cfg = base.split(":", 1)
    try:
        ref = resolve(kind, name, table, config)
    except HpcftError:      # e.g. an unknown config of a known dataset: not staged, and not stageable
        ref = None
    pairs = []
    if ref is not None:  # the canonical repo id first: another user may stage a repo named like an alias
        pairs.append((ref.repo_id, ref.config if kind == "dataset" else None))
        cfg = cfg or (ref.config if kind == "dataset" else None)
    pairs.append((base, cfg))
    if kind == "dataset" and cfg is None and "/" in base:
        head, tail = base.rsplit("/", 1)
        pairs.append((head, tail))       # glue/mrpc when the table does not know glue
    if kind == "metric" and "/" not in base:
        pairs.append((f"evaluate-metric/{base}", None))
    for repo_id, c in dict.fromkeys(pairs):
        found = cache.find(kind, repo_id, c)
        if found is None and c is not None and kind == "dataset":
            # a dataset staged without a config holds every config's files
            whole = cache.find(kind, repo_id, None)
            found = whole if whole is not None and whole.config is None else None
        if found is not None:
            return found, c or found.config
    if ref is not None and ref.needs_config:  # "glue" alone: any staged config of it will do
        found = _any_config(cache, ref.repo_id)
        if found is not None:
            return found, found.config
    return None, cfg


def lookup(kind: str, name: str, cache: Cache, table: AliasTable, *, config: Optional[str] = None,
           base_dir: Optional[Path] = None) -> JobAsset:
    """Find one asset the job names: a local path, or a staged copy of a hub name."""
    name = name.strip()
    is_local, path = local_path(kind, name, base_dir)
    if is_local:
        file_kind = "file" if (path.is_file() if path else name.lower().endswith(DATA_FILE_EXT)) else kind
        return JobAsset(file_kind if kind == "dataset" else kind, name, config, path=path, local=True)
    found, cfg = _find_staged(cache, kind, name, config, table)
    if found is None:
        base = name.split(":", 1)[0] if kind == "dataset" and config is None and ":" in name else name
        return JobAsset(kind, base, cfg)
    shown = name.split(":", 1)[0] if kind == "dataset" else name
    label = found.repo_id + (f":{found.config}" if found.config else "")
    why = foreign.problem(kind, label, JobAsset(kind, shown, cfg).typed, found.path, found.manifest, cache.admins)
    if why:
        return JobAsset(kind, shown, cfg, repo_id=found.repo_id, refused=why)
    path = metric_script(found.path, found.repo_id) if kind == "metric" else found.path
    theirs = foreign.is_foreign(found.manifest.get("_owner", foreign.ME), cache.admins)
    return JobAsset(kind, shown, cfg, path=path, repo_id=found.repo_id,
                    foreign=(str(found.path), found.manifest["_manifest"]) if theirs else None)


# --------------------------------------------------------------------------- a job's assets

def job_assets(job, cache: Cache, table: AliasTable, base_dir: Optional[Path] = None) -> list[JobAsset]:
    """Every asset a job needs, each found or not. For ``train:`` jobs the model comes first, then
    each dataset (or data file) of ``train.dataset`` in order (one unless it is a mix), then the
    metric when the job names one."""
    out: list[JobAsset] = []
    t = job.train
    if t is not None:
        out.append(lookup("model", t.model, cache, table, base_dir=base_dir))
        out += [lookup("dataset", e.name, cache, table, config=t.dataset_config, base_dir=base_dir)
                for e in t.dataset_entries]
        if t.metric:
            out.append(lookup("metric", t.metric, cache, table, base_dir=base_dir))
    extra = job.assets
    for kind, names in (("model", extra.models), ("dataset", extra.datasets), ("metric", extra.metrics)):
        out += [lookup(kind, n, cache, table, base_dir=base_dir) for n in names if n]
    return out


def stage_command(missing: list[JobAsset], table: AliasTable) -> str:
    """The ``hpcft stage ...`` line that stages the missing hub assets."""
    models = list(dict.fromkeys(a.name for a in missing if a.kind == "model"))
    datasets = list(dict.fromkeys(a.typed for a in missing if a.kind == "dataset"))
    metrics = list(dict.fromkeys(a.name for a in missing if a.kind == "metric"))
    preset = set()
    for d in datasets:
        try:
            ref = resolve("dataset", d, table)
        except HpcftError:
            continue
        if ref.metric:
            preset.add(ref.metric)
    parts = ["hpcft", "stage"]
    if models:
        parts += [models[0], *datasets]
        parts += [x for m in models[1:] for x in ("--model", m)]
    else:
        parts += [x for d in datasets for x in ("--dataset", d)]
    parts += [x for m in metrics if m not in preset for x in ("--metric", m)]
    return " ".join(shlex.quote(p) for p in parts)


def problems(assets: list[JobAsset], table: AliasTable) -> list[str]:
    """One line per kind of problem: what is not staged plus the command, and missing local paths."""
    refused = [a for a in assets if a.refused]
    hub = [a for a in assets if not a.found and not a.local and not a.refused]
    local = [a for a in assets if not a.found and a.local]
    lines = list(dict.fromkeys(a.refused for a in refused))
    if hub:
        what = ", ".join(dict.fromkeys(f"{a.kind} {a.typed}" for a in hub))
        lines.append(f"not staged in the hpcft cache: {what}")
        lines.append(f"on the login node run: {stage_command(hub, table)}")
    for a in local:
        lines.append(f"{'data file' if a.kind == 'file' else a.kind} not found: {a.name}")
    return lines


def changed_since_checked(assets: list[JobAsset]) -> list[str]:
    """Other users' copies that changed since this process looked them up (the worker asks after
    its setup phase loaded them: a copy rewritten while the job read it may have handed it the
    owner's bytes, not the ones you checked)."""
    return [f"{a.kind} {a.typed}: {a.foreign[0]} changed while this job loaded it (its owner rewrote it); "
            "stopped, as what was loaded may not be what you checked. Run `hpcft stage "
            f"{a.typed}` on the login node, then submit again"
            for a in assets if a.foreign and not foreign.checked(Path(a.foreign[0]), a.foreign[1])]


def require(assets: list[JobAsset], table: AliasTable) -> None:
    """Raise NotStagedError naming every missing asset and the exact command to stage them."""
    lines = problems(assets, table)
    if lines:
        raise NotStagedError("\n".join(lines))


# --------------------------------------------------------------------------- script jobs

def script_env(assets: list[JobAsset]) -> dict[str, str]:
    """``HPCFT_MODEL_PATH``/``HPCFT_DATASET_PATH``/``HPCFT_METRIC_PATH`` (+ ``HPCFT_DATASET_CONFIG``
    and ``HPCFT_ASSETS``, a JSON map name -> path) for the assets a job lists. Missing assets
    are left out (the submit-time asset check reports them)."""
    env: dict[str, str] = {}
    table: dict[str, str] = {}
    for a in assets:
        if not a.found:
            continue
        kind = "dataset" if a.kind == "file" else a.kind
        table[a.typed if kind == "dataset" else a.name] = str(a.path)
        key = f"HPCFT_{kind.upper()}_PATH"
        if key not in env:
            env[key] = str(a.path)
            if kind == "dataset" and a.config:
                env["HPCFT_DATASET_CONFIG"] = a.config
    if table:
        env["HPCFT_ASSETS"] = json.dumps(table, sort_keys=True)
    return env
