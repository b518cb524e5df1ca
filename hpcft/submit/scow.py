"""SCOW (OpenSCOW) placement (login side): jobs land where the web portal looks for them.

* The job's working directory is SCOW's ``submitJobDefaultPwd`` (``scow/jobs/{{ name }}`` under
  ``$HOME``); its ``job.%j.out``, ``job.%j.err`` and its script ``job.%j.sh`` (SCOW's
  ``scriptOutput`` naming) are written there.
* The run folder and the SCOW folder point at each other with symlinks: the run folder's
  ``scow`` -> the SCOW folder, its ``job.<id>.out/err`` -> the files there; the SCOW folder's
  ``hpcft-<run id>`` -> the run folder. So ``hpcft logs`` and the portal's file browser show
  the same files.
* ``--save-template`` writes the portal's saved job (one JSON file named ``<jobName>-<jobId>``
  in ``savedJobsDir``). Its ``command`` calls the rendered script with ``--rerun``; the script
  then hands over to :func:`hpcft.submit.rerun.rerun` (``python -m hpcft.scow_rerun RUN_DIR``), which makes a fresh run
  folder for the same resolved job inside the new allocation and runs it.

Shape of the saved job: see tests/schemas/scow_saved_job.schema.json (and the OpenSCOW sources
named there).
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ..core.atomic import atomic_write_json, atomic_write_text
from ..core.config import Settings
from ..core.rundir import RunPaths

if TYPE_CHECKING:
    from .render import ScriptPlan

_UNSAFE = re.compile(r"[/\x00-\x1f\x7f]")
RERUN_FLAG = "--rerun"
MINUTES = 0  # OpenSCOW TimeUnit enum (MINUTES = 0, HOURS = 1, DAYS = 2), as ts-proto serialises it


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


def _under_home(text: str) -> Path:
    p = Path(text).expanduser()
    return p if p.is_absolute() else home() / p


def job_folder(settings: Settings, name: str) -> Path:
    """SCOW's ``submitJobDefaultPwd`` for this job name (``{{ name }}`` is SCOW's placeholder)."""
    pattern = re.sub(r"\{\{\s*name\s*\}\}", lambda _: folder_name(name), settings.scow.job_dir)
    return _under_home(pattern)


def saved_jobs_dir(settings: Settings) -> Path:
    return _under_home(settings.scow.saved_jobs_dir)


def _link(target: Path | str, link: Path) -> None:
    """Create or replace a symlink atomically (a rename over the old one)."""
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
    os.symlink(target, tmp)
    os.replace(tmp, link)


def place(paths: RunPaths, scow_dir: Path, job_id: str, script: Optional[str], logs: bool = True) -> None:
    """After sbatch: the run folder and the SCOW folder point at each other; the script is
    saved as ``job.<id>.sh`` in the SCOW folder (``script`` None: an array task, whose script
    is saved once for the array; ``logs`` False: the sweep's own folder, which has none)."""
    scow_dir.mkdir(parents=True, exist_ok=True)
    _link(scow_dir, paths.dir / "scow")
    for suffix in ("out", "err") if logs else ():
        _link(scow_dir / f"job.{job_id}.{suffix}", paths.dir / f"job.{job_id}.{suffix}")
    _link(paths.dir, scow_dir / f"hpcft-{paths.run_id}")
    if script is not None:
        atomic_write_text(scow_dir / f"job.{job_id}.sh", script, mode=0o755)


# --------------------------------------------------------------------------- saved job

def saved_job(plan: "ScriptPlan", job_id: str, run_id: str, script_path: Path) -> dict[str, Any]:
    """The portal's saved-job document, field for field as the portal writes it."""
    job, r, s = plan.job, plan.job.resources, plan.settings
    doc: dict[str, Any] = {
        "jobName": job.name,
        "account": r.account or s.account or "",
        "nodeCount": r.nodes,
        "coreCount": (r.cpus_per_task or 1) * plan.ntasks_per_node,
        "gpuCount": r.gpus_per_node or 0,
        "maxTime": max(1, -(-r.time_seconds // 60)),
        "maxTimeUnit": MINUTES,
        "command": f"bash {_q(script_path)} {RERUN_FLAG}",
        "comment": f"hpcft run {run_id}",
        "workingDirectory": str(plan.scow_dir),
        "output": "job.%j.out",
        "errorOutput": "job.%j.err",
        "scriptOutput": "job.%j.sh",
        "submitTime": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
    if plan.partition:
        doc["partition"] = plan.partition
    qos = r.qos or s.qos
    if qos:
        doc["qos"] = qos
    mb = _megabytes(r.mem)
    if mb is not None:
        # A string with its unit, as the portal's form writes it (`${memorySize}MB`) and its
        # submitJob reads it back (`Number(memory.split("M")[0])`); a bare number breaks that split.
        doc["memory"] = f"{mb}MB"
    return doc


def _q(path: Path) -> str:
    import shlex

    return shlex.quote(str(path))


def _megabytes(mem: Optional[str]) -> Optional[int]:
    if not mem:
        return None
    units = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}
    unit = mem[-1].upper()
    if unit in units:
        return max(1, int(int(mem[:-1]) * units[unit]))
    return int(mem)  # Slurm's default unit is MB


def save_template(plan: "ScriptPlan", job_id: str, run_id: str, script_path: Path) -> Path:
    """Write ``<savedJobsDir>/<jobName>-<jobId>`` (atomically) and return its path."""
    folder = saved_jobs_dir(plan.settings)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{folder_name(plan.job.name)}-{job_id}"
    atomic_write_json(path, saved_job(plan, job_id, run_id, script_path), mode=0o644)
    return path
