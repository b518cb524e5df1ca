"""SCOW (OpenSCOW) placement (login side): jobs land where the web portal looks for them.

* The job's working directory is SCOW's ``submitJobDefaultPwd`` (``scow/jobs/{{ name }}``),
  read as the portal reads it: only ``{{ name }}`` is replaced, and the result is joined onto
  ``$HOME`` (:func:`job_folder`). Its ``job.%j.out`` and ``job.%j.err`` (the portal's own
  defaults) and the script, saved as ``job.<id>.sh``, are written there.
* The run folder and the SCOW folder point at each other: the run folder's ``scow`` ->
  the SCOW folder, its ``job.<id>.out/err`` -> the files there; the SCOW folder holds a real
  folder ``hpcft-<run id>/`` (the portal's file browser shows a symlink as a file and cannot
  open it) with a README naming the run folder and links to its files.
* ``--save-template`` writes the portal's saved job (one JSON file named ``<jobName>-<jobId>``
  in ``savedJobsDir``). Its ``command`` calls the saved script with ``--rerun``; the script
  then hands over to :func:`hpcft.submit.rerun.rerun` (``python -m hpcft.scow_rerun RUN_DIR``),
  which runs the same job again under the portal's new job name and folder. What the portal's
  form cannot ask for (:func:`portal_gaps`) is resubmitted from inside the portal's job.

Shape of the saved job: see tests/schemas/scow_saved_job.schema.json (and the OpenSCOW sources
named there).
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ..core.atomic import atomic_write_json, atomic_write_text
from ..core.config import SCOW_PLACEHOLDER, Settings
from ..core.job import Job
from ..core.rundir import RunPaths

if TYPE_CHECKING:
    from .render import ScriptPlan

_UNSAFE = re.compile(r"[/\x00-\x1f\x7f]")
RERUN_FLAG = "--rerun"
MINUTES = 0  # OpenSCOW TimeUnit enum (MINUTES = 0, HOURS = 1, DAYS = 2), as ts-proto serialises it
HANDOFF_MINUTES = 10  # the portal's job that only resubmits the real one (see portal_gaps)
# what hpcft-<run id>/ links to in the run folder (opened from the portal once the run writes them)
EXPOSED = ("job.yaml", "metrics.json", "curves.png", "progress.jsonl")


def home() -> Path:
    return Path(os.path.expanduser("~"))


def enabled(settings: Settings) -> bool:
    """The cluster/user setting; unset means: on when ``~/scow`` exists (a SCOW user)."""
    if settings.scow.enabled is not None:
        return settings.scow.enabled
    return (home() / "scow").is_dir()


def folder_name(name: str) -> str:
    """A job name as one path component (SCOW uses the name as typed; '/' cannot be one)."""
    safe = _UNSAFE.sub("_", name).strip()
    return "_" if safe in ("", ".", "..") else safe


def parse_placeholder(text: str, values: dict[str, str]) -> str:
    """OpenSCOW's ``parsePlaceholder`` (libs/libconfig/src/parse.ts): ``{{ key }}`` with one
    space each side becomes its value, an unknown key ""; ``{{key}}`` stays as written."""
    return SCOW_PLACEHOLDER.sub(lambda m: values.get(m.group(1), ""), text)


def portal_path(text: str) -> Path:
    """A path as the portal's form makes it: ``join(homePath + "/", text)`` (Node's path.join,
    SubmitJobForm.tsx ``calculateWorkingDirectory``), so an absolute or ``~`` path still lands
    under the home folder."""
    return Path(os.path.normpath(f"{home()}/{text}"))


def job_folder(settings: Settings, name: str) -> Path:
    """SCOW's ``submitJobDefaultPwd`` for this job name, read as the portal reads it (see
    :meth:`hpcft.core.config.Scow.job_dir_differences` for where that differs from its look)."""
    return portal_path(parse_placeholder(settings.scow.job_dir, {"name": folder_name(name)}))


def saved_jobs_dir(settings: Settings) -> Path:
    """``savedJobsDir``: the portal opens it over SFTP, relative to the home folder."""
    p = Path(settings.scow.saved_jobs_dir).expanduser()
    return p if p.is_absolute() else home() / p


def _link(target: Path | str, link: Path) -> None:
    """Create or replace a symlink atomically (a rename over the old one)."""
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
    os.symlink(target, tmp)
    os.replace(tmp, link)


def expose(paths: RunPaths, scow_dir: Path) -> Path:
    """``<SCOW folder>/hpcft-<run id>/``: a real folder, so the portal's file browser opens it
    (it lists a symlink as a file: apps/portal-server/src/clusterops/file/sshFile.ts, ``isDir``
    only for a ``d`` listing line). Inside: README.txt naming the run folder, ``run`` (a link
    for the web shell) and links to the run's files the portal can open."""
    folder = scow_dir / f"hpcft-{paths.run_id}"
    if folder.is_symlink():  # made by an older hpcft as a link to the run folder
        folder.unlink()
    folder.mkdir(exist_ok=True)
    atomic_write_text(folder / "README.txt", (
        f"hpcft run {paths.run_id}\n\n"
        f"Its run folder: {paths.dir}\n"
        "(type that path into the file browser's address bar to open it; the links here open\n"
        "the run's files once the run has written them)\n\n"
        "In the web shell:\n"
        f"  hpcft logs -f {paths.run_id}     follow the log\n"
        f"  hpcft show {paths.run_id}        results, files, how to use the model\n"
        f"  cd {shlex.quote(str(paths.dir))}\n"), mode=0o644)
    _link(paths.dir, folder / "run")
    for name in EXPOSED:
        _link(paths.dir / name, folder / name)
    return folder


def place(paths: RunPaths, scow_dir: Path, job_id: str, script: Optional[str], logs: bool = True) -> None:
    """After sbatch: the run folder and the SCOW folder point at each other; the script is
    saved as ``job.<id>.sh`` in the SCOW folder (``script`` None: an array task, whose script
    is saved once for the array, or a rerun inside the portal's job, whose script the portal
    saved; ``logs`` False: the sweep's own folder, which has none)."""
    scow_dir.mkdir(parents=True, exist_ok=True)
    _link(scow_dir, paths.dir / "scow")
    for suffix in ("out", "err") if logs else ():
        _link(scow_dir / f"job.{job_id}.{suffix}", paths.dir / f"job.{job_id}.{suffix}")
    expose(paths, scow_dir)
    if script is not None:
        atomic_write_text(scow_dir / f"job.{job_id}.sh", script, mode=0o755)


# --------------------------------------------------------------------------- what the portal can ask for

def portal_gaps(job: Job, settings: Settings) -> list[str]:
    """What the portal's job form cannot ask Slurm for, one phrase each. Its Slurm adapter
    (PKUHPC/scow-slurm-adapter services/job/job.go, SubmitJob) writes only -A, --partition,
    --qos, -J, --nodes, -c, --time, --chdir, --output, --error and ``--gres=gpu:N``; the
    ``--mem`` line is commented out ("强行删除"), and there is no tasks field."""
    r = job.resources
    gaps = []
    if r.npus_per_node:
        gaps.append(f"{r.npus_per_node} NPU(s) per node (the form asks only for --gres=gpu:N)")
    if r.gpus_per_node and settings.gpu_gres != "gpu:{n}":
        gaps.append(f"the GPU gres {settings.gpu_gres.format(n=r.gpus_per_node)} (the form asks for gpu:N)")
    if r.nodes > 1 or r.world_size > 1:
        gaps.append(f"{r.nodes} node(s) x {r.tasks_per_node} task(s) (the form has no tasks field)")
    if r.mem:
        gaps.append(f"--mem={r.mem} (the portal's Slurm adapter drops --mem)")
    if r.constraint or r.exclusive or r.sbatch:
        gaps.append("--constraint/--exclusive/extra sbatch options (the form has none)")
    return gaps


# --------------------------------------------------------------------------- saved job

def saved_job(plan: "ScriptPlan", job_id: str, run_id: str, script_path: Path) -> dict[str, Any]:
    """The portal's saved-job document, field for field as the portal writes it. A job the
    form can ask for is saved with its own resources; one it cannot (:func:`portal_gaps`) is
    saved as a small job (1 core, no GPU) whose command submits the real one."""
    job, r, s = plan.job, plan.job.resources, plan.settings
    gaps = portal_gaps(job, s)
    doc: dict[str, Any] = {
        "jobName": job.name,
        "account": r.account or s.account or "",
        "nodeCount": r.nodes,
        "coreCount": (r.cpus_per_task or 1) * plan.ntasks_per_node,
        "gpuCount": r.gpus_per_node or 0,
        "maxTime": max(1, -(-r.time_seconds // 60)),
        "maxTimeUnit": MINUTES,
        "command": f"bash {shlex.quote(str(script_path))} {RERUN_FLAG}",
        "comment": f"hpcft run {run_id}",
        "workingDirectory": str(plan.scow_dir),
        # the portal's defaults; it writes the script literally (no %j) as scriptOutput, by
        # default "<jobName>.sh" (apps/portal-server/src/services/job.ts, submitJob)
        "output": "job.%j.out",
        "errorOutput": "job.%j.err",
        "scriptOutput": f"{job.name}.sh",
        "submitTime": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
    if gaps:
        doc.update(nodeCount=1, coreCount=1, gpuCount=0, maxTime=HANDOFF_MINUTES,
                   comment=f"hpcft run {run_id}: submits it with its own resources (the form cannot ask for them)")
    if plan.partition:
        doc["partition"] = plan.partition
    qos = r.qos or s.qos
    if qos:
        doc["qos"] = qos
    # no "memory": the portal's files carry the form's figure, but it is not part of the proto
    # JobTemplate (protos/portal/job.proto) the form reads back, and the adapter drops --mem
    return doc


def save_template(plan: "ScriptPlan", job_id: str, run_id: str, script_path: Path) -> Path:
    """Write ``<savedJobsDir>/<jobName>-<jobId>`` (atomically) and return its path."""
    folder = saved_jobs_dir(plan.settings)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{folder_name(plan.job.name)}-{job_id}"
    atomic_write_json(path, saved_job(plan, job_id, run_id, script_path), mode=0o644)
    return path


def template_notes(job: Job, settings: Settings) -> list[str]:
    """What ``--save-template`` tells the user about a rerun from the portal, one line each."""
    gaps = portal_gaps(job, settings)
    lines = ["a rerun from the portal gets a new job name (job-YYYYMMDD-HHmmss) and folder; "
             "hpcft runs it as a new run linked to this one"]
    if gaps:
        lines.append("the portal's form cannot ask for: " + "; ".join(gaps))
        lines.append("so the saved job is small (1 core, no GPU, leave it so) and submits this job "
                     "with its own resources from inside the portal's job")
    return lines
