"""A job resubmitted from the SCOW portal's saved job (login-side code, run in the portal's job).

The saved job's ``command`` is ``bash <SCOW folder>/job.<id>.sh --rerun``; with that flag the
script runs ``python -m hpcft.scow_rerun RUN_DIR`` (this module, under its kept name). The
portal has renamed the job (``job-YYYYMMDD-HHmmss``) and made its working directory from that
name, so the rerun takes both from the job itself: ``SLURM_JOB_NAME`` and the folder it starts
in (the adapter's ``--chdir``; ``SLURM_SUBMIT_DIR`` is the home folder, the adapter submits with
``su - USER -c sbatch``). Then, the first that fits:

* the portal's allocation has what the job needs (one task, its cores and GPUs, and nothing
  the form cannot ask for): a fresh run folder for the same resolved job runs in it, under
  this job id;
* otherwise (NPUs, several tasks or nodes, ``--mem``, more cores than the form gave, ...):
  the job is submitted again with its own resources, from inside the portal's job, and the
  portal's job ends; its log names the new job.

Either way the new run records the run it reruns (``rerun_of``) and the original's folder
lists its reruns (:meth:`hpcft.runs.index.RunStore.note_rerun`).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ..core.config import Settings
from ..core.errors import HpcftError
from ..core.job import Job
from ..core.job_load import LoadedJob
from ..core.rundir import RunPaths, make_private_dir, write_private_pickle
from .scow import home, place, portal_gaps

if TYPE_CHECKING:
    from ..runs.index import RunRecord


@dataclass
class Allocation:
    """What the portal's job got, from its Slurm variables."""

    job_id: str
    name: Optional[str]
    nodes: int
    tasks: int
    cpus_per_task: int
    gpus: int

    @classmethod
    def from_env(cls, env: Optional[dict] = None) -> "Allocation":
        env = os.environ if env is None else env
        gpus = env.get("SLURM_GPUS_ON_NODE") or ""
        if not gpus.isdigit():
            gpus = str(len([g for g in (env.get("SLURM_JOB_GPUS") or "").split(",") if g]))
        return cls(job_id=env["SLURM_JOB_ID"], name=env.get("SLURM_JOB_NAME") or None,
                   nodes=int(env.get("SLURM_JOB_NUM_NODES") or 1), tasks=int(env.get("SLURM_NTASKS") or 1),
                   cpus_per_task=int(env.get("SLURM_CPUS_PER_TASK") or 1), gpus=int(gpus))

    def misses(self, job: Job) -> list[str]:
        """What the job needs that this allocation lacks, one phrase each."""
        r, out = job.resources, []
        if self.nodes != r.nodes or self.tasks != r.world_size:
            out.append(f"{r.nodes} node(s) x {r.tasks_per_node} task(s), got {self.nodes} x {self.tasks}")
        if r.cpus_per_task and self.cpus_per_task < r.cpus_per_task:
            out.append(f"{r.cpus_per_task} cores per task, got {self.cpus_per_task}")
        if (r.gpus_per_node or 0) > self.gpus:
            out.append(f"{r.gpus_per_node} GPU(s), got {self.gpus}")
        return out


def _rerun_job(src: RunPaths, name: Optional[str]) -> tuple[LoadedJob, "RunRecord"]:
    """The original's resolved job, renamed to the portal's job name."""
    import yaml

    from ..core.rundir import LaunchSpec
    from ..runs.index import RunStore

    old = RunStore(src.dir.parent).load(src.dir)
    data = yaml.safe_load(src.job_yaml.read_text(encoding="utf-8"))
    if name:
        data["name"] = name
    job = Job.model_validate(data)
    source = Path(old.job_file) if old.job_file else None
    return LoadedJob(job, source, data, Path(LaunchSpec.read(src.dir).base_dir)), old


def _portal_settings(settings: Settings, folder: Path) -> Settings:
    """The settings with SCOW's job folder pinned to ``folder`` (the portal's job folder),
    so that a job submitted from here logs where the portal's job does."""
    try:
        rel = folder.relative_to(home())
    except ValueError:
        return settings
    scow = settings.scow.model_copy(update={"enabled": True, "job_dir": str(rel)})
    return settings.model_copy(update={"scow": scow})


def rerun(run_dir: str | Path, alloc: Allocation, folder: Path) -> tuple[RunPaths, Optional[str]]:
    """Inside the portal's job: the same resolved job again as a new run under the portal's
    job name, logging in ``folder``. Returns the new run folder and, when the job was
    submitted again (the allocation cannot run it), the new job id; None: the caller runs
    the new folder's script in this allocation."""
    from submitit.core.utils import DelayedSubmission

    from ..core.config import load_settings
    from ..entry import WorkerCall
    from ..runs.index import RunRecord, RunStore, new_run_dir, now_iso
    from .pipeline import prepare_run

    src = RunPaths(run_dir)
    settings = load_settings()
    loaded, old = _rerun_job(src, alloc.name)
    job = loaded.job
    reasons = portal_gaps(job, settings) + alloc.misses(job)
    if reasons:
        return _resubmit(loaded, _portal_settings(settings, folder), src, reasons, alloc.job_id)
    paths = new_run_dir(settings.runs, job.name)
    prepare_run(loaded, settings, paths, old.partition, scow_dir=folder)
    if not paths.submitit.is_dir():  # prepare_run makes it private already for most runs
        make_private_dir(paths.submitit)
    delayed = DelayedSubmission(WorkerCall(str(paths.dir)))
    delayed.set_timeout(max(1, job.resources.time_seconds // 60), job.max_requeues)
    write_private_pickle(delayed, paths.submitit / f"{alloc.job_id}_submitted.pkl")  # the node's guard checks it
    place(paths, folder, alloc.job_id, None)
    record = RunRecord(run_id=paths.run_id, name=job.name, run_dir=str(paths.dir), job_file=old.job_file,
                       kind=job.kind, executor="slurm", submitted_at=now_iso(), job_id=alloc.job_id,
                       state="RUNNING", partition=old.partition, rerun_of=src.run_id)
    store = RunStore(settings.runs)
    store.add(record)
    store.note_rerun(src.dir, record)
    print(f"hpcft: rerun of {src.run_id} from the SCOW portal as run {paths.run_id} ({job.name})", flush=True)
    return paths, None


def _resubmit(loaded: LoadedJob, settings: Settings, src: RunPaths, reasons: list[str],
              launcher: str) -> tuple[RunPaths, str]:
    """Submit the job with its own resources from inside the portal's job (whose allocation
    cannot run it). Slurm's variables of this job are not handed on to the new one."""
    from ..runs.index import RunStore
    from .pipeline import submit

    for key in [k for k in os.environ if k.startswith(("SLURM_", "SBATCH_", "SRUN_")) and k != "SLURM_CONF"]:
        del os.environ[key]
    result = submit(loaded, settings, executor="slurm", save_template=False, rerun=(src.run_id, launcher))
    record = result.record
    RunStore(settings.runs).note_rerun(src.dir, record)
    print(f"hpcft: rerun of {src.run_id} from the SCOW portal: this job cannot run it ("
          f"{'; '.join(reasons)}), so it submitted job {record.job_id} (run {record.run_id}) with the job's "
          f"own resources; follow it with: hpcft logs -f {record.job_id}", flush=True)
    return RunPaths(record.run_dir), str(record.job_id)


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not os.environ.get("SLURM_JOB_ID"):
        print("usage (inside a Slurm job): python -m hpcft.scow_rerun RUN_DIR", file=sys.stderr)
        return 2
    try:
        paths, resubmitted = rerun(argv[0], Allocation.from_env(), Path.cwd())
    except HpcftError as exc:  # in the job's log, where the user looks
        for line in exc.lines():
            print(line, file=sys.stderr)
        return exc.exit_code
    if resubmitted is not None:
        return 0
    sys.stdout.flush()
    os.execv("/bin/bash", ["bash", str(paths.script)])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
