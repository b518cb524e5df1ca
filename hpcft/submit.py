"""``hpcft submit``: validate, pre-flight, render, and hand the job to submitit."""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from . import slurm
from .atomic import atomic_write_text
from .config import Settings
from .errors import PreflightError, SlurmError
from .job import LoadedJob
from .memcheck import memory_check
from .preflight import (Check, ClusterView, npu_env_check, output_dir_check, resolve_partition, run_checks,
                        staged_check)
from .render import ScriptPlan, launch_command, make_plan, render_script
from .rundir import RunPaths
from .runs import RunRecord, RunStore, new_run_dir, now_iso


@dataclass
class SubmitResult:
    record: Optional[RunRecord]
    script: str
    checks: list[Check] = field(default_factory=list)
    dry_run: bool = False

    @property
    def log(self) -> Optional[Path]:
        if self.record is None or self.record.job_id is None:
            return None
        return RunPaths(Path(self.record.run_dir)).stdout(self.record.job_id)


def choose_executor(loaded: LoadedJob, settings: Settings) -> str:
    choice = loaded.job.executor if loaded.job.executor != "auto" else settings.executor
    if choice == "auto":
        choice = "slurm" if slurm.available() else "local"
    return choice


def preflight(loaded: LoadedJob, settings: Settings, executor: str,
              skip_asset_check: bool = False) -> tuple[Optional[str], list[Check]]:
    """Every pre-flight check, passing or not, and the partition the job will use."""
    job = loaded.job
    checks: list[Check] = []
    partition = job.resources.partition
    view = None
    if executor == "slurm":
        view = ClusterView.live()
        partition = resolve_partition(job, settings, view)
        checks = run_checks(job, settings, view, partition)
    elif executor == "local" and job.resources.nodes > 1:
        checks.append(Check("executor", False, "the local executor runs one node; use executor: slurm"))
    for extra in (npu_env_check(job, loaded.base_dir), output_dir_check(job, loaded.base_dir),
                  memory_check(job, settings, view, partition, loaded.base_dir)):
        if extra is not None:
            checks.append(extra)
    if not skip_asset_check:
        checks.append(staged_check(job, settings, loaded.base_dir))
    return partition, checks


def _raise_failed(loaded: LoadedJob, checks: list[Check]) -> None:
    failed = [c for c in checks if not c.ok]
    if failed:
        raise PreflightError([f"{loaded.source or '<job>'}: {c.name}: {c.message}" for c in failed])


def submit(loaded: LoadedJob, settings: Settings, *, dry_run: bool = False,
           executor: Optional[str] = None, skip_asset_check: bool = False,
           raise_on_failure: bool = True) -> SubmitResult:
    executor = executor or choose_executor(loaded, settings)
    job = loaded.job
    partition, checks = preflight(loaded, settings, executor, skip_asset_check)
    if raise_on_failure or not dry_run:
        _raise_failed(loaded, checks)

    store = RunStore(settings.runs)
    if dry_run:
        # Render against the folder a real submit would create, but create nothing.
        run_dir = settings.runs / "<run-id>"
        plan = make_plan(loaded, settings, run_dir, partition)
        script = render_script(plan)
        if executor == "slurm" and all(c.ok for c in checks):
            checks.append(_test_only(script))
        if raise_on_failure:
            _raise_failed(loaded, checks)
        return SubmitResult(None, script, checks, dry_run=True)

    paths = new_run_dir(settings.runs, job.name)
    try:
        plan, script = prepare_run(loaded, settings, paths, partition)
        if executor == "slurm":
            check = _test_only(script)
            checks.append(check)
            if not check.ok:
                raise PreflightError([f"{loaded.source or '<job>'}: {check.name}: {check.message}"])
        record = RunRecord(run_id=paths.run_id, name=job.name, run_dir=str(paths.dir),
                           job_file=str(loaded.source) if loaded.source else None, kind=job.kind,
                           executor=executor, submitted_at=now_iso(), partition=partition)
        if executor == "slurm":
            job_id = _submit_slurm(plan, paths, script)
        else:
            job_id = _submit_local(plan, paths, loaded)
        record.job_id = job_id
        record.state = "SUBMITTED"
        store.add(record)
        return SubmitResult(record, script, checks)
    except BaseException:
        # nothing reached the queue: leave no half-written run behind
        shutil.rmtree(paths.dir, ignore_errors=True)
        raise


def _test_only(script: str) -> Check:
    with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as fh:
        fh.write(script)
    try:
        ok, text = slurm.test_only(fh.name)
    finally:
        os.unlink(fh.name)
    if ok:
        return Check("slurm accepts", True, "sbatch --test-only")
    lines = [ln.replace("sbatch: error: ", "") for ln in text.splitlines() if "error" in ln.lower()] or [text]
    return Check("slurm accepts", False, "; ".join(lines))


def prepare_run(loaded: LoadedJob, settings: Settings, paths: RunPaths,
                partition: Optional[str]) -> tuple[ScriptPlan, str]:
    """Fill a fresh run folder: the job as written and as resolved, the launch spec, the
    script (rendered once; submitit is handed this exact text). Nothing is queued."""
    import yaml

    plan = make_plan(loaded, settings, paths.dir, partition)
    script = render_script(plan)
    if loaded.source and loaded.source.is_file():
        shutil.copyfile(loaded.source, paths.source_yaml)
    atomic_write_text(paths.job_yaml, yaml.safe_dump(loaded.job.model_dump(mode="json"), sort_keys=False))
    plan.launch_spec().write()
    atomic_write_text(paths.script, script, mode=0o755)
    if not loaded.job.output_dir:
        paths.output.mkdir(exist_ok=True)
    paths.logs.mkdir(exist_ok=True)
    return plan, script


def _submit_slurm(plan: ScriptPlan, paths: RunPaths, script: str) -> str:
    import submitit

    from .entry import WorkerCall

    expected = launch_command(plan)

    class TemplatedSlurmExecutor(submitit.SlurmExecutor):
        """submitit with hpcft's readable template, rendered once, as the whole sbatch script."""

        def _make_submission_file_text(self, command: str, uid: str) -> str:
            if command != expected:  # the script's last line must be the command submitit runs
                raise SlurmError(f"internal: submitit's launch command {command!r} differs from the "
                                 f"rendered script's {expected!r}")
            return script

    executor = TemplatedSlurmExecutor(folder=str(paths.submitit), max_num_timeout=plan.job.max_requeues,
                                      python=shlex.quote(plan.python))
    r = plan.job.resources
    executor.update_parameters(time=max(1, r.time_seconds // 60), nodes=r.nodes,
                               ntasks_per_node=plan.ntasks_per_node, job_name=plan.job.name)
    try:
        job = executor.submit(WorkerCall(str(paths.dir)))
    except SlurmError:
        raise
    except Exception as exc:  # submitit wraps sbatch's stderr in its own error types
        text = str(exc).strip().splitlines()
        detail = "; ".join(ln.strip() for ln in text if "error" in ln.lower()) or (text[-1] if text else repr(exc))
        raise SlurmError(f"sbatch refused the job: {detail}") from None
    return str(job.job_id)


def _submit_local(plan: ScriptPlan, paths: RunPaths, loaded: LoadedJob) -> str:
    import submitit

    from .entry import WorkerCall

    executor = submitit.LocalExecutor(folder=str(paths.submitit), max_num_timeout=plan.job.max_requeues)
    r = plan.job.resources
    executor.update_parameters(timeout_min=max(1, r.time_seconds // 60), tasks_per_node=1,
                               signal_delay_s=plan.settings.signal_delay_s)
    job = executor.submit(WorkerCall(str(paths.dir)))
    job._cancel_at_deletion = False  # the controller must outlive this CLI process
    job_id = str(job.job_id)
    for suffix in ("out", "err"):  # SCOW-style names next to submitit's
        link = paths.dir / f"job.{job_id}.{suffix}"
        if not link.exists():
            os.symlink(paths.submitit_log(job_id, suffix).relative_to(paths.dir), link)
    return job_id
