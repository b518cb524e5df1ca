"""``hpcft submit``: validate, pre-flight, render, and hand the job to submitit."""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..cluster import slurm
from ..core.atomic import atomic_write_text
from ..core.config import Settings
from ..core.errors import PreflightError, SlurmError
from ..core.job import LoadedJob
from ..core.offline import link_openmind_cache
from ..core.rundir import RunPaths
from ..preflight import rules
from ..preflight.checks import Check, ClusterView, Preflight, resolve_partition
from ..runs.index import RunRecord, RunStore, new_run_dir, now_iso
from . import scow
from .render import ScriptPlan, launch_command, make_plan, render_script


@dataclass
class SubmitResult:
    record: Optional[RunRecord]
    script: str
    checks: list[Check] = field(default_factory=list)
    dry_run: bool = False
    template: Optional[Path] = None  # the SCOW portal's saved job, when written

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


def preflight(loaded: LoadedJob, settings: Settings, executor: str, skip_asset_check: bool = False,
              points: Optional[list] = None) -> tuple[Optional[str], list[Check]]:
    """Every pre-flight check, passing or not, and the partition the job will use. ``points``:
    a sweep's jobs, one per array task (``loaded`` is the first)."""
    view = ClusterView.live() if executor == "slurm" else None
    partition = resolve_partition(loaded.job, settings, view) if view else loaded.job.resources.partition
    p = Preflight(loaded.job, settings, loaded.base_dir, executor, view, partition, points=points or [],
                  check_assets=not skip_asset_check)
    return partition, rules.run(p)


def _raise_failed(loaded: LoadedJob, checks: list[Check]) -> None:
    failed = [c for c in checks if not c.ok]
    if failed:
        raise PreflightError([f"{loaded.source or '<job>'}: {c.name}: {c.message}" for c in failed])


def scow_folder(loaded: LoadedJob, settings: Settings, executor: str) -> Optional[Path]:
    """The SCOW job folder when SCOW placement is on (Slurm jobs only), else None."""
    return scow.job_folder(settings, loaded.job.name) if executor == "slurm" and scow.enabled(settings) else None


def submit(loaded: LoadedJob, settings: Settings, *, dry_run: bool = False,
           executor: Optional[str] = None, skip_asset_check: bool = False,
           raise_on_failure: bool = True, save_template: Optional[bool] = None) -> SubmitResult:
    executor = executor or choose_executor(loaded, settings)
    job = loaded.job
    partition, checks = preflight(loaded, settings, executor, skip_asset_check)
    if raise_on_failure or not dry_run:
        _raise_failed(loaded, checks)
    scow_dir = scow_folder(loaded, settings, executor)
    save_template = settings.scow.save_template if save_template is None else save_template
    if save_template and scow_dir is None:
        raise PreflightError([f"{loaded.source or '<job>'}: save template: the SCOW portal's saved jobs need "
                              "SCOW placement and Slurm (scow.enabled in the config, or a ~/scow folder)"])

    store = RunStore(settings.runs)
    if dry_run:
        # Render against the folder a real submit would create, but create nothing.
        run_dir = settings.runs / "<run-id>"
        plan = make_plan(loaded, settings, run_dir, partition, scow_dir=scow_dir)
        script = render_script(plan)
        if executor == "slurm" and all(c.ok for c in checks):
            checks.append(_test_only(script))
        if raise_on_failure:
            _raise_failed(loaded, checks)
        return SubmitResult(None, script, checks, dry_run=True)

    paths = new_run_dir(settings.runs, job.name)
    try:
        plan, script = prepare_run(loaded, settings, paths, partition, scow_dir=scow_dir)
        if executor == "slurm":
            check = _test_only(script)
            checks.append(check)
            if not check.ok:
                raise PreflightError([f"{loaded.source or '<job>'}: {check.name}: {check.message}"])
        record = RunRecord(run_id=paths.run_id, name=job.name, run_dir=str(paths.dir),
                           job_file=str(loaded.source) if loaded.source else None, kind=job.kind,
                           executor=executor, submitted_at=now_iso(), partition=partition)
        if executor == "slurm":
            [job_id] = submit_slurm(plan, paths, script, [paths.dir])
        else:
            job_id = _submit_local(plan, paths, loaded)
        record.job_id = job_id
        record.state = "SUBMITTED"
        store.add(record)
        result = SubmitResult(record, script, checks)
        if scow_dir is not None:
            scow.place(paths, scow_dir, job_id, script)
            if save_template:
                result.template = scow.save_template(plan, job_id, paths.run_id, scow_dir / f"job.{job_id}.sh")
        return result
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
                partition: Optional[str], *, scow_dir: Optional[Path] = None) -> tuple[ScriptPlan, str]:
    """Fill a fresh run folder: the job as written and as resolved, the launch spec, the
    script (rendered once; submitit is handed this exact text). Nothing is queued."""
    import yaml

    plan = make_plan(loaded, settings, paths.dir, partition, scow_dir=scow_dir)
    if scow_dir is not None:
        scow_dir.mkdir(parents=True, exist_ok=True)  # Slurm opens the logs there and starts the job in it
    script = render_script(plan)
    if loaded.source and loaded.source.is_file():
        shutil.copyfile(loaded.source, paths.source_yaml)
    atomic_write_text(paths.job_yaml, yaml.safe_dump(loaded.job.model_dump(mode="json"), sort_keys=False))
    plan.launch_spec().write()
    atomic_write_text(paths.script, script, mode=0o755)
    if not loaded.job.output_dir:
        paths.output.mkdir(exist_ok=True)
    paths.logs.mkdir(exist_ok=True)
    if loaded.job.script:
        link_openmind_cache(settings.cache, paths.dir)
    return plan, script


def submit_slurm(plan: ScriptPlan, paths: RunPaths, script: str, run_dirs: list[Path]) -> list[str]:
    """One sbatch call for one job (one run folder) or for a job array (one run folder per
    array task, in task order; the script carries ``--array``). Returns the job ids
    (``<array id>_<index>`` for array tasks)."""
    import uuid

    import submitit
    from submitit.core import utils as submitit_utils

    from ..entry import WorkerCall

    expected = launch_command(plan)
    if (len(run_dirs) > 1) != bool(plan.array):
        raise SlurmError(f"internal: {len(run_dirs)} run folders for a script with array={plan.array!r}")

    class TemplatedSlurmExecutor(submitit.SlurmExecutor):
        """submitit with hpcft's readable template, rendered once, as the whole sbatch script."""

        def _make_submission_file_text(self, command: str, uid: str) -> str:
            if command != expected:  # the script's last line must be the command submitit runs
                raise SlurmError(f"internal: submitit's launch command {command!r} differs from the "
                                 f"rendered script's {expected!r}")
            return script

        def _internal_process_submissions(self, delayed):
            """Arrays as submitit does them (one pickle per task, moved to <id>_<i>_submitted.pkl
            after sbatch; a task waits for it), but with this script rather than submitit's own."""
            if len(delayed) == 1:
                return super()._internal_process_submissions(delayed)
            folder = submitit_utils.JobPaths.get_first_id_independent_folder(self.folder)
            folder.mkdir(parents=True, exist_ok=True)
            pickles = []
            for d in delayed:
                pickle = folder / f"{uuid.uuid4().hex}.pkl"
                d.set_timeout(self.parameters.get("time", 5), self.max_num_timeout)
                d.dump(pickle)
                pickles.append(pickle)
            first = self._submit_command(self._submitit_command_str)
            tasks = list(range(first.num_tasks))
            jobs = [submitit.SlurmJob(folder=self.folder, job_id=f"{first.job_id}_{i}", tasks=tasks)
                    for i in range(len(delayed))]
            for job, pickle in zip(jobs, pickles):
                job.paths.move_temporary_file(pickle, "submitted_pickle")
            return jobs

    executor = TemplatedSlurmExecutor(folder=str(paths.submitit), max_num_timeout=plan.job.max_requeues,
                                      python=shlex.quote(plan.python))
    r = plan.job.resources
    executor.update_parameters(time=max(1, r.time_seconds // 60), nodes=r.nodes,
                               ntasks_per_node=plan.ntasks_per_node, job_name=plan.job.name)
    try:
        with executor.batch():
            jobs = [executor.submit(WorkerCall(str(d))) for d in run_dirs]
    except SlurmError:
        raise
    except Exception as exc:  # submitit wraps sbatch's stderr in its own error types
        text = str(exc).strip().splitlines()
        detail = "; ".join(ln.strip() for ln in text if "error" in ln.lower()) or (text[-1] if text else repr(exc))
        raise SlurmError(f"sbatch refused the job: {detail}") from None
    return [str(job.job_id) for job in jobs]


def _submit_local(plan: ScriptPlan, paths: RunPaths, loaded: LoadedJob) -> str:
    import submitit

    from ..entry import WorkerCall

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
