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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from pydantic import ValidationError

from ..core.atomic import atomic_write_text
from ..core.config import Settings
from ..core.errors import ConfigError
from ..core.job import Job
from ..core.job_load import LoadedJob
from ..core.rundir import RunPaths
from ..core.yamlfile import set_dotted
from ..preflight.checks import Check
from ..preflight.live import LiveCluster
from ..runs.index import RunRecord, RunStore, now_iso
from ..runs.sweep_record import Sweep
from . import scow
from .pipeline import (
    Submission,
    ask_cluster,
    choose_executor,
    job_memory,
    preflight,
    run,
    write_estimate,
    write_placement,
)
from .render import ScriptPlan, make_plan

# Every array task runs the one script: keys that shape it cannot differ between points.
SHARED_KEYS = ("name", "resources", "env", "executor", "sweep", "max_requeues")


@dataclass
class SweepResult:
    sweep: Optional[Sweep]
    script: str
    checks: list[Check] = field(default_factory=list)
    dry_run: bool = False
    placement: Optional[dict] = None  # partition/devices: auto, placed once for every point


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
    os.symlink(f"../{paths.script.name}", paths.script)
    os.symlink(f"../{paths.submitit.name}", paths.submitit)
    plan.output_dir.mkdir(parents=True, exist_ok=True)
    paths.logs.mkdir(exist_ok=True)


class SweepSubmission(Submission[SweepResult]):
    """A sweep through the submit pipeline: every point a run folder of its own, one array script."""

    placeholder = "<sweep-id>"
    dry_run_asks_slurm = False  # as before the pipeline was shared: a sweep's dry run skips sbatch --test-only

    def __init__(self, loaded: LoadedJob, settings: Settings, executor: str,
                 cluster: Optional[LiveCluster] = None):
        super().__init__(loaded, settings, executor, cluster)
        self.pairs = expand(loaded)
        self.first = self.pairs[0][1]  # the job the array script is rendered for

    def task_paths(self, paths: RunPaths) -> list[RunPaths]:
        return [RunPaths(paths.dir / f"{paths.run_id}-{i}") for i in range(len(self.pairs))]

    def preflight(self, skip_asset_check: bool) -> tuple[Optional[str], list[Check]]:
        placed = self.place(points=[task.job for _, task in self.pairs])  # all points on one plan
        if placed and not placed[0].ok:
            return None, placed
        if placed:  # the chosen resources into every point
            self.pairs = expand(self.loaded)
            self.first = self.pairs[0][1]
        partition, checks = preflight(self.first, self.settings, self.executor, skip_asset_check,
                                      points=[task.job for _, task in self.pairs], cluster=self.cluster)
        if any(task.job.train is not None and task.job.train.preprocess == "cpu-job" for _, task in self.pairs):
            checks.append(Check("preprocess", False, "train.preprocess: cpu-job is for one job, not a sweep: its "
                                                     "tasks tokenize in-job, one build per distinct data in the "
                                                     "cache (hpcft preprocess job.yaml first fills it)"))
        return partition, placed + checks

    def plan(self, root: Path, partition: Optional[str], scow_dir: Optional[Path]) -> ScriptPlan:
        return make_plan(self.first, self.settings, root, partition, scow_dir=scow_dir,
                         array=array_spec(len(self.pairs), self.loaded.job.sweep.max_parallel),
                         log_dir=None if scow_dir else f"{root}/{root.name}-%a")

    def write(self, plan: ScriptPlan, paths: RunPaths) -> list[Path]:
        tasks = self.task_paths(paths)
        for task_paths, (_, task) in zip(tasks, self.pairs):
            task_paths.dir.mkdir()
            write_task(task, self.settings, task_paths, plan.partition, plan.scow_dir)
            write_estimate(task_paths.dir, job_memory(task, self.settings, plan.partition, self.executor,
                                                      self.cluster), plan.partition, task.job)
        return [t.dir for t in tasks]

    def result(self, script: str, checks: list[Check]) -> SweepResult:
        return SweepResult(None, script, checks, dry_run=True,
                           placement=self.placement.as_dict() if self.placement else None)

    def record(self, plan: ScriptPlan, paths: RunPaths, script: str, job_ids: list[str],
               checks: list[Check]) -> SweepResult:
        spec, sweep_id, tasks = self.loaded.job.sweep, paths.run_id, self.task_paths(paths)
        array_id, now = job_ids[0].split("_")[0], now_iso()
        job_file = str(self.loaded.source) if self.loaded.source else None
        records = [RunRecord(run_id=p.run_id, name=self.loaded.job.name, run_dir=str(p.dir), job_file=job_file,
                             kind=task.job.kind, executor="slurm", submitted_at=now, job_id=job_id,
                             state="SUBMITTED", partition=plan.partition, sweep=sweep_id, sweep_index=i)
                   for i, (p, (_, task), job_id) in enumerate(zip(tasks, self.pairs, job_ids))]
        sweep = Sweep(sweep_id=sweep_id, name=self.loaded.job.name, run_dir=str(paths.dir), size=len(tasks),
                      points=[_plain(p) for p, _ in self.pairs], tasks=[p.run_id for p in tasks],
                      submitted_at=now, array_job_id=array_id, max_parallel=spec.max_parallel, metric=spec.metric,
                      goal=spec.goal, job_file=job_file, partition=plan.partition)
        sweep.save()
        write_placement(self, paths.dir)
        RunStore(self.settings.runs).add_many(records)
        if plan.scow_dir is not None:
            for task_paths, job_id in zip(tasks, job_ids):
                scow.place(task_paths, plan.scow_dir, job_id, None)
            scow.place(paths, plan.scow_dir, array_id, script, logs=False)
        return SweepResult(sweep, script, checks)


def submit_sweep(loaded: LoadedJob, settings: Settings, *, dry_run: bool = False,
                 executor: Optional[str] = None, skip_asset_check: bool = False) -> SweepResult:
    """A dry run returns failed checks rather than raising (``hpcft check`` prints them)."""
    cluster = ask_cluster(loaded, settings, executor)
    executor = executor or choose_executor(loaded, settings, cluster)
    if executor != "slurm":
        raise ConfigError([f"{loaded.source or '<job>'}: sweep: a sweep is one Slurm job array and needs "
                           f"executor slurm (this one would run with {executor})"])
    return run(SweepSubmission(loaded, settings, executor, cluster), dry_run=dry_run, skip_asset_check=skip_asset_check,
               raise_on_failure=False)


def _plain(point: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe point values (YAML gives str/int/float/bool; anything else as text)."""
    return {k: v if isinstance(v, (str, int, float, bool)) or v is None else str(v) for k, v in point.items()}
