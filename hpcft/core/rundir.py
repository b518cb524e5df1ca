"""The run-folder contract: where things live in a run folder, and the launch spec that
the login side writes and the compute side reads.

This module is one of the two places where the login side (CLI, submit, monitor) and the
compute side (:mod:`hpcft.worker`) meet; the other is the job schema (:mod:`hpcft.core.job`).
Everything either side needs to find in a run folder goes through :class:`RunPaths`, and
:class:`LaunchSpec` has one writer (:func:`hpcft.submit.pipeline.write_run`) and one reader
(:meth:`LaunchSpec.read`, used by the worker and by ``hpcft show``)::

    <run_id>/
      job.source.yaml     the job file as the user wrote it
      job.yaml            the resolved job (all config layers applied)
      launch.json         the launch spec (below)
      job.sh              the rendered sbatch script
      run.json            run record: ids, paths, executor, last known state (hpcft.runs.index)
      job.<jobid>.out/err logs, named as SCOW users expect; logs/ has one file per extra rank
      submitit/           submitit's pickles and per-task logs
      output/             default output_dir
      progress.jsonl, metrics.json, status.json, curves.png, checkpoints/   written by the worker
      telemetry/, tensorboard/, swanlog/   per-rank records; offline trackers (train.report_to)
      predictions/, serve.json            hpcft predict --submit / hpcft serve --submit (0600: a secret)
      eval/<task>.json, eval/harness/     hpcft eval / train.eval_tasks (benchmark scores)
      export-logs/                        hpcft export --merge --submit
      placement.json                      why partition: auto chose where the job runs
      memory-estimate.json                an LLM job's memory estimate at submit (hpcft show: vs measured)
      reruns.jsonl, .slurm-job            SCOW portal reruns of this run; the job that owns job.sh

A run folder and its ``submitit/`` are ``0700`` and submitit's pickles ``0600``, whatever the umask
(:func:`make_private_dir`, :func:`write_private_pickle`): a pickle is code the job runs, so nobody
but its owner may reach it. The worker checks that before it unpickles
(:mod:`hpcft.worker.pickle_guard`).
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from .atomic import atomic_write_json

SPEC_VERSION = 2
PRIVATE_DIR = 0o700   # a run folder, its submitit/, the runs root and HPCFT_HOME when hpcft makes them
PRIVATE_FILE = 0o600  # submitit's pickles


def make_private_dir(path: Path | str) -> None:
    """``mkdir`` a folder only its owner can enter, whatever the umask: the mode at mkdir (a umask
    can only take bits away), then ``fchmod`` on the folder opened without following a link
    (which also drops a setgid bit inherited from a group folder). FileExistsError as mkdir."""
    os.mkdir(path, PRIVATE_DIR)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchmod(fd, PRIVATE_DIR)
    finally:
        os.close(fd)


def write_private_pickle(obj: Any, path: Path | str) -> None:
    """What submitit's ``cloudpickle_dump`` writes, but ``0600`` from its first byte and never
    through a link (the same signature, so the worker hands it to submitit for its checkpoints)."""
    import cloudpickle  # submitit's own dependency: only the paths that pickle pay for it

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE)
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fd, PRIVATE_FILE)  # a file that was there already: on the descriptor, as it is now
        cloudpickle.dump(obj, fh, pickle.HIGHEST_PROTOCOL)


class RunPaths:
    """The one place that knows where things live in a run folder."""

    def __init__(self, run_dir: Path | str):
        self.dir = Path(run_dir)

    @property
    def run_id(self) -> str:
        return self.dir.name

    record = property(lambda self: self.dir / "run.json")
    job_yaml = property(lambda self: self.dir / "job.yaml")
    source_yaml = property(lambda self: self.dir / "job.source.yaml")
    launch = property(lambda self: self.dir / "launch.json")
    script = property(lambda self: self.dir / "job.sh")
    submitit = property(lambda self: self.dir / "submitit")
    output = property(lambda self: self.dir / "output")
    checkpoints = property(lambda self: self.dir / "checkpoints")
    progress = property(lambda self: self.dir / "progress.jsonl")
    metrics = property(lambda self: self.dir / "metrics.json")
    status = property(lambda self: self.dir / "status.json")
    curves = property(lambda self: self.dir / "curves.png")
    logs = property(lambda self: self.dir / "logs")
    telemetry = property(lambda self: self.dir / "telemetry")      # per-rank memory/host records
    tensorboard = property(lambda self: self.dir / "tensorboard")  # train.report_to: tensorboard
    swanlog = property(lambda self: self.dir / "swanlog")          # train.report_to: swanlab (offline)
    predictions = property(lambda self: self.dir / "predictions")  # hpcft predict --submit
    serve_info = property(lambda self: self.dir / "serve.json")    # hpcft serve --submit: node, port, pid
    memory_estimate = property(lambda self: self.dir / "memory-estimate.json")  # submit: LLM jobs

    def stdout(self, job_id: str) -> Path:
        return self.dir / f"job.{job_id}.out"

    def stderr(self, job_id: str) -> Path:
        return self.dir / f"job.{job_id}.err"

    def rank_log(self, job_id: str, rank: int) -> Path:
        return self.logs / f"job.{job_id}.rank{rank}.out"

    def submitit_log(self, job_id: str, suffix: str, task: int = 0) -> Path:
        return self.submitit / f"{job_id}_{task}_log.{suffix}"


@dataclass
class LaunchSpec:
    """What the compute node needs to run a job, decided once on the login side.

    ``env`` is the complete environment the job exports (offline flags, caches, hpcft's
    variables, the job's own ``env.vars``), with ``PYTHONPATH`` already in its final order
    (see :func:`hpcft.core.offline.join_paths`); the batch script prints it and the worker applies
    the same dict, so the local executor, which runs no script, gets the same environment.
    """

    kind: str                       # train | script
    run_dir: str
    workdir: str
    output_dir: str
    base_dir: str                   # the job file's folder: relative paths in the job resolve here
    device: str = "cpu"             # gpu | npu | cpu
    nodes: int = 1
    tasks_per_node: int = 1
    env: dict[str, str] = field(default_factory=dict)
    script: Optional[str] = None    # script jobs: the script and its arguments
    args: list[str] = field(default_factory=list)
    version: int = SPEC_VERSION

    @property
    def world_size(self) -> int:
        return self.nodes * self.tasks_per_node

    @property
    def paths(self) -> RunPaths:
        return RunPaths(self.run_dir)

    def write(self, durable: bool = True) -> None:
        atomic_write_json(self.paths.launch, asdict(self), durable=durable)

    @classmethod
    def read(cls, run_dir: Path | str) -> "LaunchSpec":
        path = RunPaths(run_dir).launch
        with open(path, encoding="utf-8") as fh:
            data: dict[str, Any] = json.load(fh)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
