"""Names users type -> what to fetch. The table is data (``aliases.yaml``), extended by
the cluster/user config (``Settings.aliases``); nothing here talks to a hub.

    bert-base-uncased      -> model   google-bert/bert-base-uncased
    glue/mrpc, glue:mrpc   -> dataset nyu-mll/glue, config mrpc (+ metric glue)
    yelp_review_full       -> dataset Yelp/yelp_review_full
    org/name[:config]      -> as written
    ./path, /abs/path      -> a local folder or file (registered, or used in place)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

from . import names
from .errors import ConfigError, StageError

KIND_SECTIONS = {"model": "models", "dataset": "datasets", "metric": "metrics"}


@dataclass(frozen=True)
class AssetRef:
    """One asset to stage, resolved from a typed name."""

    kind: str                       # model | dataset | metric
    repo_id: str                    # canonical (HF) repo id; for local assets "local/NAME"
    typed: str                      # what the user typed
    config: Optional[str] = None    # dataset config
    names: tuple[str, ...] = ()     # every name to record as an alias (typed + table names)
    ms_id: Optional[str] = None     # ModelScope id when it differs
    om_id: Optional[str] = None     # Modelers (openMind hub) id when it differs
    local: Optional[Path] = None    # a local folder/file instead of a hub repo
    configs: tuple[str, ...] = ()   # the valid configs, when the table knows them
    metric: Optional[str] = None    # the metric a dataset preset brings along

    @property
    def label(self) -> str:
        base = f"{self.repo_id}:{self.config}" if self.config else self.repo_id
        return base if self.typed in (self.repo_id, base) else f"{base} ({self.typed})"

    @property
    def needs_config(self) -> bool:
        return self.kind == "dataset" and bool(self.configs) and not self.config


@dataclass
class Entry:
    id: str
    modelscope: Optional[str] = None
    modelers: Optional[str] = None
    configs: tuple[str, ...] = ()
    metric: Optional[str] = None
    config: Optional[str] = None    # an alias that pins a config ("org/name:config")


@dataclass
class AliasTable:
    models: dict[str, Entry] = field(default_factory=dict)
    datasets: dict[str, Entry] = field(default_factory=dict)
    metrics: dict[str, Entry] = field(default_factory=dict)

    def section(self, kind: str) -> dict[str, Entry]:
        return getattr(self, KIND_SECTIONS[kind])

    def names_for(self, kind: str, repo_id: str) -> list[str]:
        """Every table name that points at ``repo_id`` (for the manifest's aliases)."""
        return sorted(n for n, e in self.section(kind).items() if e.id == repo_id)

    def by_id(self, kind: str, repo_id: str) -> Optional[Entry]:
        for e in self.section(kind).values():
            if e.id == repo_id:
                return e
        return None


def _entry(kind: str, name: str, value: Any, where: str) -> Entry:
    if isinstance(value, str):
        rid, _, cfg = value.partition(":") if kind == "dataset" else (value, "", "")
        return Entry(id=rid, config=cfg or None)
    if isinstance(value, dict) and isinstance(value.get("id"), str):
        unknown = set(value) - {"id", "modelscope", "modelers", "configs", "metric"}
        if not unknown:
            return Entry(id=value["id"], modelscope=value.get("modelscope"), modelers=value.get("modelers"),
                         configs=tuple(str(c) for c in value.get("configs") or ()), metric=value.get("metric"))
    raise ConfigError([f"{where}: aliases.{KIND_SECTIONS[kind]}.{name}: expected 'org/name' or "
                       "{id: org/name, configs: [...], metric: NAME, modelscope: org/name, modelers: owner/name}"])


@lru_cache(maxsize=1)
def _builtin() -> dict:
    import yaml

    text = (Path(__file__).with_name("aliases.yaml")).read_text(encoding="utf-8")
    return yaml.safe_load(text) or {}


def load_table(settings=None) -> AliasTable:
    """The packaged table, then the config's ``aliases`` on top (config wins)."""
    table = AliasTable()
    for kind, section in KIND_SECTIONS.items():
        for name, value in (_builtin().get(section) or {}).items():
            table.section(kind)[str(name)] = _entry(kind, name, value, "hpcft/core/aliases.yaml")
    if settings is not None:
        extra = settings.aliases
        for kind, section in KIND_SECTIONS.items():
            for name, value in getattr(extra, section).items():
                entry = _entry(kind, name, value, "config")
                known = table.by_id(kind, entry.id)
                if known and not entry.config:  # keep what the table knows about that repo
                    entry = Entry(entry.id, known.modelscope, known.modelers, known.configs, known.metric)
                table.section(kind)[name] = entry
    return table


# local data files, and the `datasets` builder that loads each type
DATA_FILE_SUFFIXES = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet",
                      ".arrow": "arrow", ".txt": "text"}
DATA_FILE_EXT = tuple(DATA_FILE_SUFFIXES)


def is_local(name: str) -> bool:
    """A path rather than a hub id: explicit path syntax, an existing path, or a data file name."""
    return name.startswith(("/", "./", "../", "~")) or name in (".", "..") or os.path.exists(name) \
        or name.lower().endswith(DATA_FILE_EXT)


def _local_ref(kind: str, name: str) -> AssetRef:
    path = Path(name).expanduser()
    if not path.exists():
        raise StageError(f"{kind} {name}: no such file or folder")
    path = path.resolve()
    return AssetRef(kind, names.local_id(path.name), name, names=(name, str(path)), local=path)


def _checked(ref: AssetRef) -> AssetRef:
    """Every id and config that will become part of a cache path, validated (names.py)."""
    what = f"{ref.kind} {ref.typed}"
    names.repo_id(ref.repo_id, what)
    for other in (ref.ms_id, ref.om_id):
        if other:
            names.repo_id(other, what)
    if ref.config is not None:
        names.config_name(ref.config, what)
    return ref


def _split_config(name: str) -> tuple[str, Optional[str]]:
    base, sep, cfg = name.partition(":")
    return (base, cfg or None) if sep else (name, None)


def resolve(kind: str, name: str, table: AliasTable, config: Optional[str] = None) -> AssetRef:
    """Resolve a typed name; raises StageError for an unknown config of a known dataset, and for
    an id or config that is not one a hub could have (``../x``, ``a/b/c/d``, a NUL, ...)."""
    ref = _resolve(kind, name, table, config)
    return ref if ref.local is not None else _checked(ref)


def _resolve(kind: str, name: str, table: AliasTable, config: Optional[str] = None) -> AssetRef:
    name = name.strip()
    if not name:
        raise StageError(f"empty {kind} name")
    if is_local(name):
        return _local_ref(kind, name)
    section = table.section(kind)
    if kind != "dataset":
        entry = section.get(name)
        if entry:
            names = (name, *table.names_for(kind, entry.id))
            return AssetRef(kind, entry.id, name, names=_uniq(names), ms_id=entry.modelscope, om_id=entry.modelers)
        rid = f"evaluate-metric/{name}" if kind == "metric" and "/" not in name else name
        return AssetRef(kind, rid, name, names=_uniq((name, *table.names_for(kind, rid))))

    base, cfg = _split_config(name)
    entry, table_name = section.get(base), base
    if entry is None and base.count("/") >= 1:
        head, _, tail = base.partition("/")
        if head in section and section[head].configs and "/" not in tail:
            entry, table_name, cfg = section[head], head, cfg or tail   # glue/mrpc
        elif base.count("/") == 2:                                      # org/name/config
            base, _, tail = base.rpartition("/")
            cfg = cfg or tail
    if entry is None:
        entry = table.by_id("dataset", base)
        table_name = base
    cfg = cfg or config
    if entry is None:
        return AssetRef("dataset", base, name, config=cfg, names=_uniq((name, base)))
    cfg = cfg or entry.config
    if cfg and entry.configs and cfg not in entry.configs:
        raise StageError(f"dataset {table_name}: unknown config {cfg!r}; available: {', '.join(entry.configs)} "
                         f"(e.g. {table_name}{':' if '/' in table_name else '/'}{entry.configs[0]})")
    names = [name, table_name, *table.names_for("dataset", entry.id)]
    if cfg:
        names += [f"{n}/{cfg}" for n in table.names_for("dataset", entry.id) if entry.configs]
    return AssetRef("dataset", entry.id, name, config=cfg, names=_uniq(names), ms_id=entry.modelscope,
                    om_id=entry.modelers, configs=entry.configs, metric=entry.metric)


def _uniq(items) -> tuple[str, ...]:
    out: list[str] = []
    for i in items:
        if i and i not in out:
            out.append(i)
    return tuple(out)


def plan(models: list[str], datasets: list[str], metrics: list[str], table: AliasTable, *,
         with_metrics: bool = True) -> list[AssetRef]:
    """All assets to stage, in order, deduplicated; dataset presets add their metric."""
    refs: list[AssetRef] = []
    problems: list[str] = []

    def add(kind, name):
        try:
            ref = resolve(kind, name, table)
        except StageError as exc:
            problems.append(str(exc))
            return None
        if ref.needs_config:
            problems.append(f"dataset {name} needs a config: one of {', '.join(ref.configs)} "
                            f"(e.g. {name}/{ref.configs[0]})")
            return None
        if not any((r.kind, r.repo_id, r.config) == (ref.kind, ref.repo_id, ref.config) for r in refs):
            refs.append(ref)
        return ref

    for m in models:
        add("model", m)
    for d in datasets:
        ref = add("dataset", d)
        if ref is not None and with_metrics and ref.metric:
            add("metric", ref.metric)
    for m in metrics:
        add("metric", m)
    if problems:
        raise StageError("; ".join(problems)) if len(problems) == 1 else ConfigError(problems)
    return refs
