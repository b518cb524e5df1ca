"""Preprocessing off the GPU: the schema bits and the run-folder record (no Slurm, no worker).

``train.preprocess: cpu-job`` (or ``hpcft preprocess job.yaml``) tokenizes a causal-lm job's data
in a CPU-partition Slurm job of its own, into the tokenize-once cache
(:mod:`hpcft.core.data_key`); the training job waits on it (``--dependency=afterok``) and
starts training at once from the cache. Where that job runs is the cluster config's
``preprocess:`` (:class:`PreprocessSettings`). The job writes ``preprocess.json`` into its
folder (:func:`read_record`), which ``hpcft show`` prints.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

# train.preprocess: where a causal-lm job's data are tokenized. in-job (the default): by the
# training job itself, rank 0, into the cache; cpu-job: first, by a CPU job of their own
PreprocessMode = Literal["in-job", "cpu-job"]
RECORD = "preprocess.json"      # written by hpcft.worker.data.preprocess, when it ends
QUEUED = "preprocess-queued.json"  # written by the login side at submit (a file of its own: no race)
SPEC = "preprocess-spec.json"   # written by the login side: what the worker needs beside job.yaml
SCRIPT = "preprocess.sh"
LOG_STEM = "preprocess"         # preprocess.<jobid>.out / .err
TASKS = ("causal-lm",)          # the tasks whose data go through the tokenize-once cache


class PreprocessSettings(BaseModel):
    """Config ``preprocess:``: the CPU job that tokenizes. ``partition`` None: the config's
    ``default_partition.cpu``, else its first ``partitions.cpu``, else Slurm's default one."""

    model_config = ConfigDict(extra="forbid")

    partition: Optional[str] = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    cpus: int = Field(4, ge=1, le=512)         # also the number of processes of the tokenizing map
    mem: str = Field("16G", pattern=r"^\d+[KMGT]?$")
    time: str = Field("02:00:00", pattern=r"^(\d+-)?\d{1,2}(:\d{2}){0,2}$")

    def partition_for(self, settings) -> Optional[str]:
        if self.partition:
            return self.partition
        cpu = settings.default_partition.get("cpu")
        if cpu:
            return cpu
        return settings.partitions.cpu[0] if settings.partitions.cpu else None


def task_problem(job) -> Optional[str]:
    """Why this job has nothing to preprocess (one line), or None."""
    t = job.train
    if job.script or t is None:
        return "preprocess: a script job has no tokenized-data cache (only train: jobs with task: causal-lm)"
    if t.task not in TASKS:
        return f"preprocess: task: {t.task} has no tokenized-data cache (only task: {', '.join(TASKS)})"
    if t.data_cache is False:
        return "preprocess: train.data_cache is false: there is no cache for a CPU job to fill"
    return None


def read_record(folder: Path) -> Optional[dict]:
    """The preprocess job's record (its end), else what submit recorded when it queued it (or
    found the cache built); None for a run without ``train.preprocess: cpu-job``."""
    for name in (RECORD, QUEUED):
        try:
            data = json.loads((Path(folder) / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            return data
    return None


def describe(rec: Optional[dict], run_ended: bool = False) -> Optional[str]:
    """``hpcft show``'s preprocessing line (``run_ended``: the training job is over, so a job
    still recorded as queued ended without writing its record)."""
    if not rec:
        return None
    if rec.get("state") == "queued-none":
        return f"cache {rec.get('key')} already built at submit: no preprocess job queued"
    where = f"job {rec.get('job_id')}" + (f" on {rec['node']}" if rec.get("node") else "")
    if rec.get("state") == "queued" and run_ended:
        return f"{where} ended without a record (killed, or out of time or memory: see {LOG_STEM}.{rec.get('job_id')}.err)"
    if rec.get("state") == "queued":
        return f"{where} queued (partition {rec.get('partition') or 'default'}), cache {rec.get('key')}"
    if rec.get("state") == "failed":
        return f"{where} failed: {rec.get('error')}"
    how = "cache hit, nothing to tokenize" if rec.get("cache") == "hit" else "tokenized"
    return (f"{where}, {rec.get('num_proc')} processes: {how}; {rec.get('examples')} examples, "
            f"{rec.get('tokens')} tokens in {rec.get('tokenize_s')} s -> cache {rec.get('key')}")
