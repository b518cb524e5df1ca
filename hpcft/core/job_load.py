"""Reading a job file: its layers (cluster and user ``job_defaults`` < the file < ``--set``), a
LLaMA-Factory YAML mapped first, validation against :class:`hpcft.core.job.Job`, and the files it
names. Every problem is reported at once, one line each, as ``file:line: field: message``."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from pydantic import BaseModel, ValidationError

from .config import Settings
from .dsconfig import check as check_deepspeed_file
from .errors import ConfigError
from .job import Job, TrainSpec
from .llamafactory import LfSource
from .llamafactory import translate as translate_llamafactory
from .resources import _CONTROL, Resources
from .yamlfile import YamlDoc, deep_merge, load_yaml_file, parse_yaml, set_dotted, sorted_problems, validation_problems


def _expand(value: str, base_dir: Path) -> Path:
    """A job path: ``~`` expanded, relative paths against base_dir. Raises ValueError for
    a ``~user`` that does not exist."""
    try:
        p = Path(value).expanduser()
    except RuntimeError:
        raise ValueError(f"cannot expand {value.split('/')[0]!r}: no such user") from None
    return p if p.is_absolute() else (base_dir / p)


@dataclass
class LoadedJob:
    """A validated job plus where it came from."""

    job: Job
    source: Optional[Path]          # the job file, None when built in code
    resolved: dict[str, Any]        # the merged document that produced ``job``
    base_dir: Path = field(default_factory=Path.cwd)  # relative paths resolve against this
    llamafactory: Optional[LfSource] = None  # the LLaMA-Factory YAML it was mapped from

    def path(self, value: str) -> Path:
        try:
            return _expand(value, self.base_dir)
        except ValueError:  # load_job has reported it; keep the text as a relative path
            return self.base_dir / value

    @property
    def script_path(self) -> Optional[Path]:
        return self.path(self.job.script).resolve() if self.job.script else None


Problem = tuple[Optional[int], str]  # (line or None, "file:line: field: message")


def load_job(path: Union[str, Path, None], settings: Settings, sets: list[tuple[str, Any]] = (),
             text: Optional[str] = None) -> LoadedJob:
    """Read, layer and validate a job file. Raises one ConfigError listing every problem,
    schema and files alike, in file order (problems without a line last)."""
    label = str(path or "<job>")
    if text is not None:
        doc = parse_yaml(text, label, empty_ok=False)
    else:
        doc = load_yaml_file(path, empty_ok=False)
    source = Path(path).resolve() if path else None
    base_dir = source.parent if source else Path.cwd()
    doc, lf_source = translate_llamafactory(doc, base_dir)  # a LLaMA-Factory YAML: the hpcft job it maps to
    data: dict[str, Any] = deep_merge(copy.deepcopy(settings.job_defaults), doc.data)
    for key, value in sets:
        set_dotted(data, key, value)
        doc.override(tuple(key.split(".")), f"--set {key}")
    problems: list[Problem] = list(doc.problems)
    job = None
    try:
        job = Job.model_validate(data)
    except ValidationError as exc:
        problems += validation_problems(exc, Job, doc, label)
        # model-level checks do not run when fields fail; repeat the one users hit most
        if "train" not in data and "script" not in data:
            problems.append((None, f"{label}: nothing to run: give either train: (built-in fine-tuning) "
                                   "or script: (your own script)"))
    problems += _check_files(data, base_dir, doc)
    if problems:
        raise ConfigError(sorted_problems(problems))
    return LoadedJob(job, source, data, base_dir, lf_source)


def _valid(model: type[BaseModel], value: Any) -> Optional[BaseModel]:
    """value validated as model, or None when it is not valid (its problems are reported)."""
    try:
        return model.model_validate(value if value is not None else {})
    except ValidationError:
        return None


def _text(value: Any) -> Optional[str]:
    """A path-like field's value if it is usable text (else the schema reports it)."""
    return value if isinstance(value, str) and value and not _CONTROL.search(value) else None


def _positive(value: Any) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else None


def _check_files(data: dict[str, Any], base_dir: Path, doc: YamlDoc) -> list[Problem]:
    """Files the job names (script, workdir, DeepSpeed config): checked from the raw document,
    so they are reported even when other fields fail the schema."""
    problems: list[Problem] = []

    def add(loc: tuple, message: str) -> None:
        line, where = doc.where(loc)
        problems.append((line, f"{where}: {'.'.join(loc)}: {message}"))

    def existing(loc: tuple, value: Any, what: str) -> Optional[Path]:
        """The path if it names an existing file (what="file") or directory, else None."""
        text = _text(value)
        if text is None:
            return None
        try:
            p = _expand(text, base_dir)
        except ValueError as exc:
            add(loc, str(exc))
            return None
        if p.is_dir() if what == "directory" else p.is_file():
            return p
        if what != "directory" and p.is_dir():
            add(loc, f"{what} is a directory: {p}")
        else:
            add(loc, f"{what} not found: {p}")
        return None

    existing(("script",), data.get("script"), "file")
    existing(("workdir",), data.get("workdir"), "directory")
    train = data.get("train")
    if not isinstance(train, dict):
        return problems
    ds = train.get("deepspeed")
    config = ds if isinstance(ds, str) and ds != "auto" else ds.get("config") if isinstance(ds, dict) else None
    ds_path = existing(("train", "deepspeed"), config, "config file")
    if ds_path is None:
        return problems
    spec = _valid(TrainSpec, train)
    if spec is not None:
        batch, accum = spec.batch_size, spec.gradient_accumulation
    else:  # compare only what is valid in the job
        fields = TrainSpec.model_fields
        batch = _positive(train.get("batch_size", fields["batch_size"].default))
        accum = _positive(train.get("gradient_accumulation", fields["gradient_accumulation"].default))
    r = _valid(Resources, data.get("resources"))
    world = r.world_size if r is not None else None
    for p in check_deepspeed_file(ds_path, batch, accum, world):
        add(("train", "deepspeed"), p)
    return problems
