"""Sweeps (login side): one job file with a ``sweep:`` block becomes N resolved jobs and **one**
``sbatch --array=0-(N-1)%K`` submission.

::

    runs/<sweep id>/                 the sweep: sweep.json, job.sh (the array script), submitit/
      <sweep id>-0/ ... <sweep id>-8/  one run folder per array task: job.yaml (the resolved point),
                                     launch.json, run.json, job.<array id>_<i>.out/err, output/

The mapping from array task to run folder is made once, here: task ``i`` gets submitit's pickle
``<array id>_<i>_submitted.pkl``, which names its run folder (:class:`hpcft.entry.WorkerCall`),
so each task reads its own launch spec, and requeues and resumes on its own.
"""

from __future__ import annotations

import copy
import itertools
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from pydantic import ValidationError

from ..core.atomic import atomic_write_json, atomic_write_text, read_json
from ..core.config import Settings
from ..core.errors import ConfigError, PreflightError
from ..core.job import Job, LoadedJob
from ..core.rundir import RunPaths
from ..core.yamlfile import set_dotted
from ..preflight.checks import Check
from ..runs.index import RunRecord, RunStore, new_run_dir, now_iso
from . import scow
from .pipeline import _raise_failed, _test_only, choose_executor, preflight, scow_folder, submit_slurm
from .render import make_plan, render_script

# Every array task runs the one script: keys that shape it cannot differ between points.
SHARED_KEYS = ("name", "resources", "env", "executor", "sweep", "max_requeues")
SWEEP_FILE = "sweep.json"


@dataclass
class Sweep:
    """What ``sweep.json`` holds: enough to group, count, cancel and rank without the job file."""

    sweep_id: str
    name: str
    run_dir: str
    size: int
    points: list[dict[str, Any]]
    tasks: list[str]                     # run ids, in array index order
    submitted_at: str
    array_job_id: Optional[str] = None
    max_parallel: Optional[int] = None
    metric: Optional[str] = None
    goal: str = "max"
    job_file: Optional[str] = None
    partition: Optional[str] = None

    @property
    def task_dirs(self) -> list[Path]:
        return [Path(self.run_dir) / t for t in self.tasks]

    def save(self) -> None:
        atomic_write_json(Path(self.run_dir) / SWEEP_FILE, asdict(self))

    @classmethod
    def load(cls, run_dir: Path | str) -> Optional["Sweep"]:
        data = read_json(Path(run_dir) / SWEEP_FILE)
        if not isinstance(data, dict):
            return None
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class SweepResult:
    sweep: Optional[Sweep]
    script: str
    checks: list[Check] = field(default_factory=list)
    dry_run: bool = False


def sweep_points(job: Job) -> list[dict[str, Any]]:
    """The points in array order: a grid varies its last key fastest."""
    spec = job.sweep
    if spec is None:
        return []
    if spec.points:
        return [dict(p) for p in spec.points]
    keys = list(spec.grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(spec.grid[k] for k in keys))]


def describe(point: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in point.items())


def expand(loaded: LoadedJob) -> list[tuple[dict[str, Any], LoadedJob]]:
    """Every point as a validated job (its own ``job.yaml``). All problems at once."""
    label = str(loaded.source or "<job>")
    points = sweep_points(loaded.job)
    base = copy.deepcopy(loaded.resolved)
    base.pop("sweep", None)
    problems: list[str] = []
    keys = sorted({k for p in points for k in p})
    for key in keys:
        if not isinstance(key, str) or not key:
            problems.append(f"{label}: sweep: {key!r}: a key is a dotted job key such as train.learning_rate")
        elif key.split(".")[0] in SHARED_KEYS:
            problems.append(f"{label}: sweep: {key}: every array task runs one script, so {key.split('.')[0]} "
                            "is the same for all points; sweep train.* (or args, script, output_dir)")
    if problems:
        raise ConfigError(problems)
    out: list[tuple[dict[str, Any], LoadedJob]] = []
    found: dict[tuple[str, str], list[int]] = {}  # (field, message) -> the points that have it
    for index, point in enumerate(points):
        data = copy.deepcopy(base)
        for key, value in point.items():
            set_dotted(data, key, value)
        if data.get("output_dir"):  # one output folder per point, never shared between tasks
            data["output_dir"] = f"{str(data['output_dir']).rstrip('/')}/{index}"
        try:
            job = Job.model_validate(data)
        except ValidationError as exc:
            for err in exc.errors():
                loc = ".".join(str(p) for p in err["loc"]) or "job"
                found.setdefault((loc, err["msg"]), []).append(index)
            continue
        out.append((point, LoadedJob(job, loaded.source, data, loaded.base_dir)))
    for (loc, msg), where in found.items():  # one line per problem, not one per point
        more = f" and {len(where) - 1} more" if len(where) > 1 else ""
        problems.append(f"{label}: sweep point {where[0]} ({describe(points[where[0]])}){more}: {loc}: {msg}")
    if problems:
        raise ConfigError(problems)
    return out


def array_spec(size: int, max_parallel: Optional[int]) -> str:
    return f"0-{size - 1}" + (f"%{max_parallel}" if max_parallel else "")


def _link(target: str, link: Path) -> None:
    os.symlink(target, link)


def write_task(loaded: LoadedJob, settings: Settings, paths: RunPaths, partition: Optional[str],
               scow_dir: Optional[Path]) -> None:
    """A task's run folder: the point's resolved job and launch spec; the array's script and
    submitit folder are the sweep's (symlinks)."""
    import yaml

    plan = make_plan(loaded, settings, paths.dir, partition, scow_dir=scow_dir)
    if loaded.source and loaded.source.is_file():
        shutil.copyfile(loaded.source, paths.source_yaml)
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml: 10x faster for 100s of tasks
    text = yaml.dump(loaded.job.model_dump(mode="json"), Dumper=dumper, sort_keys=False)
    # fresh folders nobody reads before sbatch: atomic, without one fsync per file
    atomic_write_text(paths.job_yaml, text, durable=False)
    plan.launch_spec().write(durable=False)
    _link(f"../{paths.script.name}", paths.script)
    _link(f"../{paths.submitit.name}", paths.submitit)
    plan.output_dir.mkdir(parents=True, exist_ok=True)
    paths.logs.mkdir(exist_ok=True)


def submit_sweep(loaded: LoadedJob, settings: Settings, *, dry_run: bool = False,
                 executor: Optional[str] = None, skip_asset_check: bool = False) -> SweepResult:
    label = str(loaded.source or "<job>")
    executor = executor or choose_executor(loaded, settings)
    if executor != "slurm":
        raise ConfigError([f"{label}: sweep: a sweep is one Slurm job array and needs executor slurm "
                           f"(this one would run with {executor})"])
    spec = loaded.job.sweep
    pairs = expand(loaded)
    size = len(pairs)
    first = pairs[0][1]
    partition, checks = preflight(first, settings, executor, skip_asset_check, points=[t.job for _, t in pairs])
    if not dry_run:
        _raise_failed(loaded, checks)
    array = array_spec(size, spec.max_parallel)
    scow_dir = scow_folder(loaded, settings, executor)
    if dry_run:
        root = settings.runs / "<sweep-id>"
        plan = make_plan(first, settings, root, partition, scow_dir=scow_dir, array=array,
                         log_dir=None if scow_dir else f"{root}/<sweep-id>-%a")
        return SweepResult(None, render_script(plan), checks, dry_run=True)

    sweep_paths = new_run_dir(settings.runs, loaded.job.name)
    sweep_id = sweep_paths.run_id
    tasks = [RunPaths(sweep_paths.dir / f"{sweep_id}-{i}") for i in range(size)]
    queued = False
    try:
        for paths, (_, task) in zip(tasks, pairs):
            paths.dir.mkdir()
            write_task(task, settings, paths, partition, scow_dir)
        plan = make_plan(first, settings, sweep_paths.dir, partition, scow_dir=scow_dir, array=array,
                         log_dir=None if scow_dir else f"{sweep_paths.dir}/{sweep_id}-%a")
        script = render_script(plan)
        atomic_write_text(sweep_paths.script, script, mode=0o755)
        check = _test_only(script)
        checks.append(check)
        if not check.ok:
            raise PreflightError([f"{label}: {check.name}: {check.message}"])
        job_ids = submit_slurm(plan, sweep_paths, script, [p.dir for p in tasks])
        queued = True
    except BaseException:
        if not queued:  # nothing reached the queue: leave no half-written sweep behind
            shutil.rmtree(sweep_paths.dir, ignore_errors=True)
        raise
    array_id = job_ids[0].split("_")[0]
    now = now_iso()
    records = [RunRecord(run_id=p.run_id, name=loaded.job.name, run_dir=str(p.dir),
                         job_file=str(loaded.source) if loaded.source else None, kind=task.job.kind,
                         executor="slurm", submitted_at=now, job_id=job_id, state="SUBMITTED",
                         partition=partition, sweep=sweep_id, sweep_index=i)
               for i, (p, (_, task), job_id) in enumerate(zip(tasks, pairs, job_ids))]
    sweep = Sweep(sweep_id=sweep_id, name=loaded.job.name, run_dir=str(sweep_paths.dir), size=size,
                  points=[_plain(p) for p, _ in pairs], tasks=[p.run_id for p in tasks], submitted_at=now,
                  array_job_id=array_id, max_parallel=spec.max_parallel, metric=spec.metric, goal=spec.goal,
                  job_file=records[0].job_file, partition=partition)
    sweep.save()
    RunStore(settings.runs).add_many(records)
    if scow_dir is not None:
        for paths, job_id in zip(tasks, job_ids):
            scow.place(paths, scow_dir, job_id, None)
        scow.place(sweep_paths, scow_dir, array_id, script, logs=False)
    return SweepResult(sweep, script, checks)


def _plain(point: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe point values (YAML gives str/int/float/bool; anything else as text)."""
    return {k: v if isinstance(v, (str, int, float, bool)) or v is None else str(v) for k, v in point.items()}
