"""A job resubmitted from the SCOW portal's saved job (login-side code, run in the job).

The saved job's ``command`` is ``bash <SCOW folder>/job.<id>.sh --rerun``; with that flag the
script runs ``python -m hpcft.scow_rerun RUN_DIR`` (this module, under its kept name), which makes a fresh run folder for the same
resolved job, registers it under the new job id, and runs the new folder's script, whose
launch line starts the worker as any hpcft job does.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..core.errors import ConfigError, HpcftError
from ..core.rundir import RunPaths
from .scow import job_folder, place


def rerun(run_dir: str | Path, job_id: str) -> RunPaths:
    """Inside a job the portal submitted from a saved job: a fresh run folder for the same
    resolved job, registered under this job id, with submitit's pickle for this job id in
    place. The caller then runs the new folder's script (which launches the worker)."""
    import yaml
    from submitit.core.utils import DelayedSubmission

    from ..core.config import load_settings
    from ..core.job import Job, LoadedJob
    from ..core.rundir import LaunchSpec
    from ..entry import WorkerCall
    from ..runs.index import RunRecord, RunStore, new_run_dir, now_iso
    from .pipeline import prepare_run

    src = RunPaths(run_dir)
    settings = load_settings()
    old = RunStore(src.dir.parent).load(src.dir)
    data = yaml.safe_load(src.job_yaml.read_text(encoding="utf-8"))
    job = Job.model_validate(data)
    ntasks = int(os.environ.get("SLURM_NTASKS") or 1)
    if ntasks != job.resources.world_size:  # the portal's form has no tasks-per-node (nor NPU) field
        raise ConfigError([f"hpcft: {job.name} runs {job.resources.world_size} tasks (one per device) but this "
                           f"job from the SCOW portal has {ntasks}; resubmit it with: hpcft submit "
                           f"{old.job_file or src.job_yaml}"])
    source = Path(old.job_file) if old.job_file else None
    loaded = LoadedJob(job, source, data, Path(LaunchSpec.read(src.dir).base_dir))
    scow_dir = job_folder(settings, job.name)
    paths = new_run_dir(settings.runs, job.name)
    prepare_run(loaded, settings, paths, old.partition, scow_dir=scow_dir)
    paths.submitit.mkdir(exist_ok=True)
    delayed = DelayedSubmission(WorkerCall(str(paths.dir)))
    delayed.set_timeout(max(1, job.resources.time_seconds // 60), job.max_requeues)
    delayed.dump(paths.submitit / f"{job_id}_submitted.pkl")
    place(paths, scow_dir, job_id, None)
    RunStore(settings.runs).add(RunRecord(
        run_id=paths.run_id, name=job.name, run_dir=str(paths.dir), job_file=old.job_file, kind=job.kind,
        executor="slurm", submitted_at=now_iso(), job_id=job_id, state="RUNNING", partition=old.partition))
    print(f"hpcft: rerun of {src.run_id} from the SCOW portal as run {paths.run_id}", flush=True)
    return paths


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not os.environ.get("SLURM_JOB_ID"):
        print("usage (inside a Slurm job): python -m hpcft.scow_rerun RUN_DIR", file=sys.stderr)
        return 2
    try:
        paths = rerun(argv[0], os.environ["SLURM_JOB_ID"])
    except HpcftError as exc:  # in the job's log, where the user looks
        for line in exc.lines():
            print(line, file=sys.stderr)
        return exc.exit_code
    sys.stdout.flush()
    os.execv("/bin/bash", ["bash", str(paths.script)])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
