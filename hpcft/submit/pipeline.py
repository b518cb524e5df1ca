"""``hpcft submit``: one pipeline for a job and for a sweep, each step a public function::

    preflight -> refuse -> SCOW folder -> dry run (render, slurm_accepts)
              -> run folder -> write -> slurm_accepts -> queue -> record (and place)

:func:`run` goes through the steps for a :class:`Submission`; what differs between a job
(:class:`JobSubmission`, here) and a sweep (:class:`hpcft.submit.sweep.SweepSubmission`, one
job array) is what is written into the run folder, and what is recorded and placed after sbatch."""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Generic, Optional, TypeVar

from ..cluster import slurm
from ..core.atomic import atomic_write_text
from ..core.config import Settings
from ..core.errors import PreflightError, SlurmError
from ..core.job import Job
from ..core.job_load import LoadedJob
from ..core.offline import link_openmind_cache
from ..core.rundir import RunPaths, make_private_dir, write_private_pickle
from ..preflight import rules
from ..preflight.checks import Check, Preflight, resolve_partition
from ..preflight.live import ClusterView, LiveCluster
from ..runs.index import RunRecord, RunStore, new_run_dir, now_iso
from . import scow
from .render import ScriptPlan, make_plan, render_script, submitit_command


@dataclass
class SubmitResult:
    record: Optional[RunRecord]
    script: str
    checks: list[Check] = field(default_factory=list)
    dry_run: bool = False
    template: Optional[Path] = None  # the SCOW portal's saved job, when written
    placement: Optional[dict] = None  # partition/devices: auto (hpcft.preflight.placement)
    estimate: Optional[dict] = None   # the memory estimate of an LLM job (hpcft check --json)
    preprocess: Optional[dict] = None  # train.preprocess: cpu-job (hpcft.submit.preprocess.Preprocessing)

    @property
    def log(self) -> Optional[Path]:
        if self.record is None or self.record.job_id is None:
            return None
        return RunPaths(Path(self.record.run_dir)).stdout(self.record.job_id)


# --------------------------------------------------------------------------- the steps

def ask_cluster(loaded: LoadedJob, settings: Settings, executor: Optional[str]) -> Optional[LiveCluster]:
    """Slurm's answers this job needs, all asked at once: none for a job that runs locally, no
    ping for one that names Slurm."""
    choice = executor or (loaded.job.executor if loaded.job.executor != "auto" else settings.executor)
    return None if choice == "local" else LiveCluster(ping=choice == "auto")


def choose_executor(loaded: LoadedJob, settings: Settings, cluster: Optional[LiveCluster] = None) -> str:
    """The job's executor, else the config's; auto: Slurm when its controller answers."""
    choice = loaded.job.executor if loaded.job.executor != "auto" else settings.executor
    if choice == "auto":
        choice = "slurm" if (cluster.available() if cluster else slurm.available()) else "local"
    return choice


def preflight(loaded: LoadedJob, settings: Settings, executor: str, skip_asset_check: bool = False,
              points: Optional[list[Job]] = None, cluster: Optional[LiveCluster] = None
              ) -> tuple[Optional[str], list[Check]]:
    """Every pre-flight check, passing or not, and the partition the job will use. ``points``:
    a sweep's jobs, one per array task (``loaded`` is the first); ``cluster``: Slurm's answers,
    asked for already."""
    view = None
    if executor == "slurm":
        view = cluster.view() if cluster else ClusterView.live()
    partition = resolve_partition(loaded.job, settings, view) if view is not None else loaded.job.resources.partition
    p = Preflight(loaded.job, settings, loaded.base_dir, executor, view, partition, points=points or [],
                  check_assets=not skip_asset_check)
    return partition, rules.run(p)


def refuse(loaded: LoadedJob, checks: list[Check]) -> None:
    """A :class:`PreflightError` naming every failed check, if there is one."""
    failed = [c for c in checks if not c.ok]
    if failed:
        raise PreflightError([f"{loaded.source or '<job>'}: {c.name}: {c.message}" for c in failed])


def scow_folder(loaded: LoadedJob, settings: Settings, executor: str) -> Optional[Path]:
    """The SCOW job folder when SCOW placement is on (Slurm jobs only), else None."""
    return scow.job_folder(settings, loaded.job.name) if executor == "slurm" and scow.enabled(settings) else None


def slurm_accepts(script: str) -> Check:
    """Slurm's own verdict on the script (``sbatch --test-only``), as a check."""
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


def write_script(plan: ScriptPlan, paths: RunPaths) -> str:
    """Render the script once into the run folder (submitit is handed this exact text). Under
    SCOW placement the SCOW folder is made first: Slurm opens the logs there and starts the job in it."""
    if plan.scow_dir is not None:
        plan.scow_dir.mkdir(parents=True, exist_ok=True)
    script = render_script(plan)
    atomic_write_text(paths.script, script, mode=0o755)
    return script


def queue(plan: ScriptPlan, paths: RunPaths, script: str, run_dirs: list[Path], executor: str) -> list[str]:
    """Hand the script to submitit: one sbatch call (or one local process). The job ids, one per run folder."""
    if executor == "slurm":
        return submit_slurm(plan, paths, script, run_dirs)
    return [submit_local(plan, paths)]


R = TypeVar("R")  # what a submission returns: SubmitResult, SweepResult


class Submission(Generic[R]):
    """What one sbatch call submits. A subclass says what goes into the run folder and what is
    recorded and placed once the job is queued."""

    placeholder = "<run-id>"   # the run folder a dry run renders against (created by no one)
    dry_run_asks_slurm = True  # a dry run asks ``sbatch --test-only`` too (when every check passed)

    def __init__(self, loaded: LoadedJob, settings: Settings, executor: str,
                 cluster: Optional[LiveCluster] = None):
        self.loaded, self.settings, self.executor, self.cluster = loaded, settings, executor, cluster

    placement = None  # hpcft.preflight.placement.Placement, when the job left a resource to it
    estimate: Optional[dict] = None

    def place(self, points: Optional[list[Job]] = None) -> list[Check]:
        """``partition``/``*_per_node``/``deepspeed``: auto resolved into ``self.loaded``, before any
        other check looks at the job; the placement check (its table), failed when nothing fits."""
        from ..preflight.placement import place, wants_placement

        if not wants_placement(self.loaded.job):
            return []
        if self.executor != "slurm":
            return [Check("placement", False, "partition/devices: auto needs Slurm (sbatch --test-only); "
                                              "name them for executor local")]
        view = self.cluster.view() if self.cluster else ClusterView.live()
        placed, self.placement = place(self.loaded, self.settings, view, points, self.executor)
        if placed is None:
            return [Check("placement", False, f"{self.placement.reason}\n{self.placement.table()}")]
        self.loaded = placed
        c = self.placement.chosen
        size = f"{c.devices} device(s) x {c.nodes} node(s)" if c.devices else f"{c.nodes} node(s)"
        return [Check("placement", True, f"{c.partition}, {size}"
                                         f"{'' if c.zero_stage is None else f', ZeRO-{c.zero_stage}'}: "
                                         f"{self.placement.reason}\n{self.placement.table()}")]

    def preflight(self, skip_asset_check: bool) -> tuple[Optional[str], list[Check]]:
        placed = self.place()
        if placed and not placed[0].ok:
            return None, placed
        partition, checks = preflight(self.loaded, self.settings, self.executor, skip_asset_check,
                                      cluster=self.cluster)
        self.estimate = job_memory(self.loaded, self.settings, partition, self.executor, self.cluster)
        lf = self.loaded.llamafactory
        notes = [Check("llamafactory", True, note) for note in (lf.notes if lf else [])]
        return partition, placed + notes + checks

    def check_options(self, scow_dir: Optional[Path]) -> None:
        """Refuse options that the checks passed but that cannot work here."""

    def plan(self, root: Path, partition: Optional[str], scow_dir: Optional[Path]) -> ScriptPlan:
        return make_plan(self.loaded, self.settings, root, partition, scow_dir=scow_dir)

    def write(self, plan: ScriptPlan, paths: RunPaths) -> list[Path]:
        """Fill the new run folder, the script aside; the run folders to queue (one per task)."""
        raise NotImplementedError

    def abandon(self) -> None:
        """Undo what was queued before the job itself failed to queue (its preprocess job)."""

    def result(self, script: str, checks: list[Check]) -> R:
        """A dry run's result."""
        raise NotImplementedError

    def record(self, plan: ScriptPlan, paths: RunPaths, script: str, job_ids: list[str],
               checks: list[Check]) -> R:
        """After sbatch: the runs index, and SCOW placement; the result."""
        raise NotImplementedError


def run(sub: Submission[R], *, dry_run: bool = False, skip_asset_check: bool = False,
        raise_on_failure: bool = True) -> R:
    """The pipeline. ``raise_on_failure`` False: a dry run returns failed checks instead of raising."""
    partition, checks = sub.preflight(skip_asset_check)
    if raise_on_failure or not dry_run:
        refuse(sub.loaded, checks)
    scow_dir = scow_folder(sub.loaded, sub.settings, sub.executor)
    sub.check_options(scow_dir)
    if dry_run:  # render against the folder a real submit would create, but create nothing
        script = render_script(sub.plan(sub.settings.runs / sub.placeholder, partition, scow_dir))
        if sub.dry_run_asks_slurm and sub.executor == "slurm" and all(c.ok for c in checks):
            checks.append(slurm_accepts(script))
        if raise_on_failure:
            refuse(sub.loaded, checks)
        return sub.result(script, checks)

    paths = new_run_dir(sub.settings.runs, sub.loaded.job.name)
    try:
        plan = sub.plan(paths.dir, partition, scow_dir)
        run_dirs = sub.write(plan, paths)
        script = write_script(plan, paths)
        if sub.executor == "slurm":
            checks.append(slurm_accepts(script))
            refuse(sub.loaded, checks[-1:])
        job_ids = queue(plan, paths, script, run_dirs, sub.executor)
    except BaseException:  # nothing reached the queue: leave no half-written run behind
        sub.abandon()
        shutil.rmtree(paths.dir, ignore_errors=True)
        raise
    return sub.record(plan, paths, script, job_ids, checks)  # queued: the run folder stays, come what may


# --------------------------------------------------------------------------- one job

class JobSubmission(Submission[SubmitResult]):
    def __init__(self, loaded: LoadedJob, settings: Settings, executor: str, save_template: Optional[bool] = None,
                 cluster: Optional[LiveCluster] = None, rerun: Optional[tuple[str, str]] = None):
        super().__init__(loaded, settings, executor, cluster)
        self.save_template = settings.scow.save_template if save_template is None else save_template
        self.rerun = rerun   # (the run it reruns, the SCOW portal job submitting it): hpcft.submit.rerun
        self.preprocessing = None   # train.preprocess: cpu-job: what hpcft.submit.preprocess did

    def preflight(self, skip_asset_check: bool) -> tuple[Optional[str], list[Check]]:
        partition, checks = super().preflight(skip_asset_check)
        from .preprocess import check

        return partition, checks + check(self.loaded, self.settings, self.executor)

    def check_options(self, scow_dir: Optional[Path]) -> None:
        if self.save_template and scow_dir is None:
            raise PreflightError([f"{self.loaded.source or '<job>'}: save template: the SCOW portal's saved jobs "
                                  "need SCOW placement and Slurm (scow.enabled in the config, or a ~/scow folder)"])

    def write(self, plan: ScriptPlan, paths: RunPaths) -> list[Path]:
        write_run(plan, paths)
        write_placement(self, paths.dir)
        write_estimate(paths.dir, self.estimate, plan.partition, self.loaded.job)
        t = self.loaded.job.train
        if t is not None and t.preprocess == "cpu-job":   # tokenized first by a CPU job; training waits on it
            from .preprocess import for_submit

            self.preprocessing = for_submit(self.loaded, self.settings, paths.dir)
            if self.preprocessing.job_id:
                plan.after = slurm.after_ok([self.preprocessing.job_id])
        return [paths.dir]

    def abandon(self) -> None:
        if self.preprocessing is not None and self.preprocessing.job_id:
            slurm.cancel(self.preprocessing.job_id)

    def result(self, script: str, checks: list[Check]) -> SubmitResult:
        return SubmitResult(None, script, checks, dry_run=True, estimate=self.estimate,
                            placement=self.placement.as_dict() if self.placement else None)

    def record(self, plan: ScriptPlan, paths: RunPaths, script: str, job_ids: list[str],
               checks: list[Check]) -> SubmitResult:
        job, [job_id] = self.loaded.job, job_ids
        record = RunRecord(run_id=paths.run_id, name=job.name, run_dir=str(paths.dir),
                           job_file=str(self.loaded.source) if self.loaded.source else None, kind=job.kind,
                           executor=self.executor, submitted_at=now_iso(), partition=plan.partition,
                           job_id=job_id, state="SUBMITTED")
        if self.rerun:   # in the index too: `hpcft logs <the portal's job id>` finds this run
            record.rerun_of, record.launched_by = self.rerun
        RunStore(self.settings.runs).add(record)
        result = SubmitResult(record, script, checks,
                              preprocess=self.preprocessing.as_dict() if self.preprocessing else None)
        if plan.scow_dir is not None:
            # the portal's copy, resubmitted later, must not wait on a preprocess job Slurm may have forgotten
            scow.place(paths, plan.scow_dir, job_id, render_script(replace(plan, after=None)) if plan.after else script)
            if self.save_template:
                result.template = scow.save_template(plan, job_id, paths.run_id, plan.scow_dir / f"job.{job_id}.sh")
        return result


def submit(loaded: LoadedJob, settings: Settings, *, dry_run: bool = False,
           executor: Optional[str] = None, skip_asset_check: bool = False,
           raise_on_failure: bool = True, save_template: Optional[bool] = None,
           rerun: Optional[tuple[str, str]] = None) -> SubmitResult:
    cluster = ask_cluster(loaded, settings, executor)
    executor = executor or choose_executor(loaded, settings, cluster)
    sub = JobSubmission(loaded, settings, executor, save_template, cluster, rerun)
    return run(sub, dry_run=dry_run, skip_asset_check=skip_asset_check, raise_on_failure=raise_on_failure)


def write_placement(sub: "Submission", run_dir: Path) -> None:
    """``placement.json`` in the run folder: what placement chose, why, and every candidate."""
    from ..core.atomic import atomic_write_json

    if sub.placement is not None:
        atomic_write_json(run_dir / "placement.json", sub.placement.as_dict())


def write_estimate(run_dir: Path, est: Optional[dict], partition: Optional[str], job) -> None:
    """``memory-estimate.json``: what the pre-flight estimated, for ``hpcft show`` to hold
    against the run's measured peaks, and for later checks of the same model, data and plan
    (:mod:`hpcft.runs.memory`)."""
    from ..core.atomic import atomic_write_json
    from ..runs.memory import dataset_key

    if est and est.get("available") and job.train is not None:
        atomic_write_json(RunPaths(run_dir).memory_estimate, {**est, "partition": partition, "model": job.train.model,
                                                              "dataset": dataset_key(job.train.dataset)})


def job_memory(loaded: LoadedJob, settings: Settings, partition: Optional[str], executor: str,
               cluster: Optional[LiveCluster]) -> Optional[dict]:
    """The memory estimate of an LLM job, as ``hpcft check --json`` prints it; None for others."""
    from ..core.memory.estimate import estimate
    from ..preflight.memcheck import job_estimate

    if loaded.job.train is None or not loaded.job.train.is_llm:
        return None
    view = cluster.view() if (cluster and executor == "slurm") else None
    shape, plan, why = job_estimate(Preflight(loaded.job, settings, loaded.base_dir, executor, view, partition))
    if shape is None:
        return {"available": False, "reason": why.message if why else "model not staged"}
    return {"available": True, **estimate(shape, plan).as_dict()}


def write_run(plan: ScriptPlan, paths: RunPaths) -> None:
    """A run folder's files but the script: the job as written and as resolved, the launch spec."""
    import yaml

    loaded = plan.loaded
    if loaded.source and loaded.source.is_file():
        shutil.copyfile(loaded.source, paths.source_yaml)
    atomic_write_text(paths.job_yaml, yaml.safe_dump(loaded.job.model_dump(mode="json"), sort_keys=False))
    if loaded.llamafactory is not None:  # the LLaMA-Factory YAML as the user wrote it, beside what it became
        atomic_write_text(paths.dir / "llamafactory.yaml", loaded.llamafactory.text)
    plan.launch_spec().write()
    private_submitit_folder(paths)
    if not loaded.job.output_dir:
        paths.output.mkdir(exist_ok=True)
    paths.logs.mkdir(exist_ok=True)
    if loaded.job.script:
        link_openmind_cache(plan.settings.cache, paths.dir)


def prepare_run(loaded: LoadedJob, settings: Settings, paths: RunPaths,
                partition: Optional[str], *, scow_dir: Optional[Path] = None) -> tuple[ScriptPlan, str]:
    """Fill a fresh run folder: the job as written and as resolved, the launch spec, the
    script. Nothing is queued (a SCOW portal rerun, the dev tools)."""
    plan = make_plan(loaded, settings, paths.dir, partition, scow_dir=scow_dir)
    write_run(plan, paths)
    return plan, write_script(plan, paths)


# --------------------------------------------------------------------------- submitit

def private_submitit_folder(paths: RunPaths) -> None:
    """``submitit/`` exists, 0700, before submitit writes a pickle or a log into it (submitit
    makes it with the umask's mode otherwise)."""
    try:
        make_private_dir(paths.submitit)
    except FileExistsError:
        pass


def submit_slurm(plan: ScriptPlan, paths: RunPaths, script: str, run_dirs: list[Path]) -> list[str]:
    """One sbatch call for one job (one run folder) or for a job array (one run folder per
    array task, in task order; the script carries ``--array``). Returns the job ids
    (``<array id>_<index>`` for array tasks)."""
    import uuid

    import submitit
    from submitit.core import utils as submitit_utils

    from ..entry import WorkerCall

    expected = submitit_command(plan)  # what the rendered script's guard hands on to (render.launch_command)
    if (len(run_dirs) > 1) != bool(plan.array):
        raise SlurmError(f"internal: {len(run_dirs)} run folders for a script with array={plan.array!r}")

    class TemplatedSlurmExecutor(submitit.SlurmExecutor):
        """submitit with hpcft's readable template, rendered once, as the whole sbatch script."""

        def _make_submission_file_text(self, command: str, uid: str) -> str:
            if command != expected:  # the script's guard runs submitit on the folder submitit would
                raise SlurmError(f"internal: submitit's launch command {command!r} differs from the "
                                 f"one the rendered script's guard runs, {expected!r}")
            return script

        def _internal_process_submissions(self, delayed):
            """A job or an array as submitit does them (one pickle per task, moved to
            <id>[_<i>]_submitted.pkl after sbatch; a task waits for it), but with this script
            rather than submitit's own, and each pickle 0600 from its first byte: the worker
            refuses one that others could have written (hpcft.worker.pickle_guard)."""
            folder = submitit_utils.JobPaths.get_first_id_independent_folder(self.folder)
            pickles = []
            for d in delayed:
                pickle = folder / f"{uuid.uuid4().hex}.pkl"
                d.set_timeout(self.parameters.get("time", 5), self.max_num_timeout)
                write_private_pickle(d, pickle)
                pickles.append(pickle)
            first = self._submit_command(self._submitit_command_str)
            if len(delayed) == 1:
                jobs = [first]
            else:
                tasks = list(range(first.num_tasks))
                jobs = [submitit.SlurmJob(folder=self.folder, job_id=f"{first.job_id}_{i}", tasks=tasks)
                        for i in range(len(delayed))]
            for job, pickle in zip(jobs, pickles):
                job.paths.move_temporary_file(pickle, "submitted_pickle")
            return jobs

    private_submitit_folder(paths)  # a sweep's: its task folders link to it
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


def submit_local(plan: ScriptPlan, paths: RunPaths) -> str:
    import submitit

    from ..entry import WorkerCall

    private_submitit_folder(paths)  # submitit writes its pickle with the umask's mode: nobody else may reach it
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
