"""Per-rank logs for multi-rank jobs: rank 0 writes the main log (job.<id>.out), every
other rank its own file ``logs/job.<id>.rank<N>.out`` (stdout and stderr together), so
the main log stays readable and one rank's traceback is easy to find.

``logs/job.<id>.rank0.out`` is a link to the main log, so every rank has a file.
"""

from __future__ import annotations

import os
import sys

from hpcft.core.rundir import RunPaths
from hpcft.worker.taskenv import TaskEnv


def setup_rank_logs(paths: RunPaths, task: TaskEnv) -> None:
    rank, world, job_id = task.rank, task.world_size, task.job_id
    if world <= 1:
        return
    paths.logs.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        link = paths.rank_log(job_id, 0)
        if not link.is_symlink() and not link.exists():
            # relative, so the run folder can move; a requeued leg finds it already there
            os.symlink(os.path.relpath(paths.stdout(job_id), paths.logs), link)
        return
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(paths.rank_log(job_id, rank), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    print(f"hpcft: rank {rank}/{world} on {os.uname().nodename}", flush=True)
