"""Per-rank logs for multi-rank jobs: rank 0 writes the main log (job.<id>.out), every
other rank its own file ``logs/job.<id>.rank<N>.out`` (stdout and stderr together), so
the main log stays readable and one rank's traceback is easy to find.

``logs/job.<id>.rank0.out`` is a link to the main log, so every rank has a file.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def task_ids() -> tuple[int, int, int]:
    """(rank, local rank, world size) of this task: Slurm's per-task ids, else submitit's
    local executor's. The one place the launcher reads them."""
    def first(slurm: str, local: str, default: str) -> int:
        return int(os.environ.get(slurm, os.environ.get(local, default)) or default)

    return (first("SLURM_PROCID", "SUBMITIT_LOCAL_GLOBALID", "0"),
            first("SLURM_LOCALID", "SUBMITIT_LOCAL_LOCALID", "0"),
            first("SLURM_NTASKS", "SUBMITIT_LOCAL_NTASKS", "1"))


def task_rank() -> tuple[int, int]:
    rank, _, world = task_ids()
    return rank, world


def setup_rank_logs(run_dir: str | Path) -> None:
    rank, world = task_rank()
    if world <= 1:
        return
    job_id = os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID") or "local"
    logs = Path(run_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        link = logs / f"job.{job_id}.rank0.out"
        if not link.exists() and not link.is_symlink():
            try:
                os.symlink(f"../job.{job_id}.out", link)
            except FileExistsError:
                pass  # a requeued run already made it
        return
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(logs / f"job.{job_id}.rank{rank}.out", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    print(f"hpcft: rank {rank}/{world} on {os.uname().nodename}", flush=True)
