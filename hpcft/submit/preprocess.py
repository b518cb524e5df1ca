"""Preprocessing off the GPU, the login side: ``hpcft preprocess job.yaml`` and
``train.preprocess: cpu-job`` (:mod:`hpcft.core.preprocess` has the schema and the record).

The cache key of the job's data is computed here as the worker computes it
(:mod:`hpcft.core.data_key`: no transformers). A key already built queues nothing. Otherwise
a one-task job on the CPU partition (config ``preprocess:``) runs
``python -m hpcft.worker.data.preprocess FOLDER`` in the job's own environment, with
``preprocess.cpus`` processes for the tokenizing map; its script, log and record go into
FOLDER (the run folder under ``submit``, a folder of its own under ``$HPCFT_HOME/preprocess``
for ``hpcft preprocess``). ``submit`` makes the training job depend on it (:func:`slurm.after_ok`).
"""

from __future__ import annotations

import datetime as _dt
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..cluster import slurm
from ..core.atomic import atomic_write_json, atomic_write_text
from ..core.config import Settings
from ..core.data_key import built_meta, cache_key, ingredients, runtime_cache_root
from ..core.errors import ConfigError, SlurmError
from ..core.job_load import LoadedJob
from ..core.offline import cache_env
from ..core.preprocess import LOG_STEM, QUEUED, SCRIPT, SPEC, task_problem
from ..core.rundir import make_private_dir
from .render import make_plan, q, template_environment


@dataclass
class Preprocessing:
    """What ``hpcft preprocess`` or ``submit`` did about a job's data."""

    key: str
    cache: Path                     # $HPCFT_RUNTIME/data/KEY
    hit: bool                       # already built: nothing queued
    job_id: Optional[str] = None
    folder: Optional[Path] = None   # its script, log and preprocess.json
    partition: Optional[str] = None
    examples: Optional[int] = None  # of a hit: what the cache holds
    tokens: Optional[int] = None

    @property
    def log(self) -> Optional[Path]:
        return self.folder / f"{LOG_STEM}.{self.job_id}.out" if self.folder and self.job_id else None

    def as_dict(self) -> dict:
        return {"key": self.key, "cache": str(self.cache), "hit": self.hit, "job_id": self.job_id,
                "folder": str(self.folder) if self.folder else None, "partition": self.partition,
                "log": str(self.log) if self.log else None, "examples": self.examples, "tokens": self.tokens,
                "line": self.line()}

    def line(self) -> str:
        if self.hit:
            return (f"data cache {self.key} already built ({self.examples} examples, {self.tokens} "
                    "tokens): no preprocess job queued")
        return (f"job {self.job_id} tokenizes on partition {self.partition or '(default)'} into "
                f"cache {self.key}; log {self.log}")


def job_key(loaded: LoadedJob, settings: Settings) -> tuple[str, Path]:
    """The data cache key of a causal-lm job and its folder, as the worker will compute them;
    ConfigError (one line each) when the job has no cache or its assets are not staged."""
    from ..core.assets import job_assets
    from ..core.resolve import load_table
    from ..core.store import Cache, admin_uids

    src = str(loaded.source or "<job>")
    why = task_problem(loaded.job)
    if why:
        raise ConfigError([f"{src}: {why}"])
    t = loaded.job.train
    found = job_assets(loaded.job, Cache(settings.cache, admin_uids(settings)), load_table(settings),
                       loaded.base_dir)
    needed = found[:1 + len(t.dataset_entries)]
    missing = [a for a in needed if not a.found]
    if missing:
        raise ConfigError([f"{src}: {a.kind} {a.name}: not found{f' ({a.refused})' if a.refused else ''}; "
                           "stage it first (hpcft check lists the command)" for a in missing])
    key = cache_key(ingredients(t, needed[1:], needed[0].path))
    return key, runtime_cache_root(cache_env(settings.cache)["HPCFT_RUNTIME"]) / key


def cpu_job(loaded: LoadedJob, settings: Settings) -> LoadedJob:
    """The job narrowed to what tokenizing needs: one CPU task on the preprocess partition,
    ``preprocess.cpus`` CPUs, its memory and time; the job's account, qos and environment."""
    p = settings.preprocess
    job = loaded.job
    res = job.resources.model_copy(update={
        "partition": p.partition_for(settings), "nodes": 1, "gpus_per_node": None, "npus_per_node": None,
        "cpus_per_task": p.cpus, "mem": p.mem, "time": p.time, "exclusive": False, "constraint": None,
        "sbatch": []})
    return LoadedJob(job.model_copy(update={"name": f"{job.name}-preprocess", "resources": res}), loaded.source,
                     loaded.resolved, loaded.base_dir, loaded.llamafactory)


def render(loaded: LoadedJob, settings: Settings, folder: Path) -> str:
    """The preprocess job's sbatch script (every value quoted; templates/aux.sbatch.j2 over cpu)."""
    from ..use.launch import AuxPlan

    cpu = cpu_job(loaded, settings)
    base = make_plan(cpu, settings, folder, cpu.job.resources.partition)
    fields = {k: getattr(base, k) for k in base.__dataclass_fields__ if k != "log_dir"}
    plan = AuxPlan(**fields, aux=LOG_STEM, log_dir=str(folder))
    command = " ".join(q(a) for a in (plan.python, "-u", "-m", "hpcft.worker.data.preprocess", str(folder)))
    from .. import __version__

    return template_environment(settings).get_template("aux.sbatch.j2").render(
        parent="cpu.sbatch.j2", plan=plan, job=cpu.job, settings=settings, version=__version__, aux=LOG_STEM,
        job_file=str(loaded.source or "<job>"), command=command)


def queue(loaded: LoadedJob, settings: Settings, folder: Path, key: str, cache: Path,
          write_job: bool = False) -> Preprocessing:
    """Write the spec and the script into ``folder`` and sbatch it; ``preprocess-queued.json`` says so."""
    import yaml

    if write_job:
        atomic_write_text(folder / "job.yaml", yaml.safe_dump(loaded.job.model_dump(mode="json"), sort_keys=False))
    p = settings.preprocess
    atomic_write_json(folder / SPEC, {"base_dir": str(loaded.base_dir), "num_proc": p.cpus, "key": key})
    script = atomic_write_text(folder / SCRIPT, render(loaded, settings, folder), mode=0o755)
    job_id = slurm.sbatch(str(script))
    partition = p.partition_for(settings)
    atomic_write_json(folder / QUEUED, {"state": "queued", "job_id": job_id, "partition": partition, "key": key})
    return Preprocessing(key, cache, False, job_id, folder, partition)


def hit(key: str, cache: Path) -> Optional[Preprocessing]:
    meta = built_meta(cache)
    if meta is None:
        return None
    return Preprocessing(key, cache, True, examples=(meta.get("info") or {}).get("train_examples"),
                         tokens=meta.get("tokens"))


def for_submit(loaded: LoadedJob, settings: Settings, run_dir: Path) -> Preprocessing:
    """``submit`` of a ``train.preprocess: cpu-job`` job: a hit queues nothing (recorded in the
    run folder's preprocess-queued.json); a miss queues the preprocess job from the run folder."""
    key, cache = job_key(loaded, settings)
    done = hit(key, cache)
    if done is not None:
        atomic_write_json(run_dir / QUEUED, {"state": "queued-none", "key": key, "examples": done.examples,
                                             "tokens": done.tokens})
        return done
    return queue(loaded, settings, run_dir, key, cache)


def preprocess(loaded: LoadedJob, settings: Settings) -> Preprocessing:
    """``hpcft preprocess job.yaml``: build the job's data cache in a CPU job (nothing when it
    is built already), so that a later ``submit`` hits it."""
    key, cache = job_key(loaded, settings)
    done = hit(key, cache)
    if done is not None:
        return done
    if not slurm.available():
        raise SlurmError("hpcft preprocess queues a Slurm job: no Slurm controller answers here")
    from ..core.offline import ensure_private

    root = ensure_private(settings.home / "preprocess")
    prune(root)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = root / f"{stamp}-{loaded.job.name}-{secrets.token_hex(2)}"
    make_private_dir(folder)
    try:
        return queue(loaded, settings, folder, key, cache, write_job=True)
    except BaseException:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
        raise


KEEP_FINISHED = 20   # standalone preprocess folders kept once their job has written its record


def prune(root: Path, keep: int = KEEP_FINISHED) -> list[Path]:
    """Remove all but the newest ``keep`` folders under ``$HPCFT_HOME/preprocess`` whose job has
    ended (its ``preprocess.json`` is there; the data cache itself lives elsewhere). A folder
    without the record may belong to a queued or running job and is left alone, as is anything
    that is not a plain folder. Returns what was removed."""
    import shutil

    from ..core.preprocess import RECORD

    finished = sorted((p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and (p / RECORD).is_file()),
                      key=lambda p: p.name)   # the names start with their timestamp
    gone = finished[:-keep] if keep > 0 else finished
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    return gone


def check(loaded: LoadedJob, settings: Settings, executor: str) -> list:
    """The pre-flight's ``preprocess`` line for a ``train.preprocess: cpu-job`` job (none for
    others): failed off Slurm or without a cache; else whether the key is built already."""
    from ..preflight.checks import Check

    t = loaded.job.train
    if t is None or t.preprocess != "cpu-job":
        return []
    why = task_problem(loaded.job)
    if why:
        return [Check("preprocess", False, why.removeprefix("preprocess: "))]
    if executor != "slurm":
        return [Check("preprocess", False, "train.preprocess: cpu-job queues a CPU Slurm job: it needs executor "
                                           "slurm (in-job tokenizes in the training job)")]
    try:
        key, cache = job_key(loaded, settings)
    except ConfigError:   # assets not staged: the assets check says so
        return []
    if hit(key, cache) is not None:
        return [Check("preprocess", True, f"data cache {key} already built: no preprocess job")]
    return [Check("preprocess", True, f"a CPU job on partition {settings.preprocess.partition_for(settings) or '(default)'} "
                                      f"tokenizes into cache {key} first; training waits on it (afterok)")]
