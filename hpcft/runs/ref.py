"""Run references (login side): the one place that turns what a user typed after ``status``,
``cancel``, ``show``, ``logs``, ``compare``, ``predict``, ``serve`` or ``export`` into a run or a sweep.

A reference is, the first that fits:

* nothing, or ``latest``: the latest run;
* a run folder or a sweep folder (a path);
* a run id, or a sweep id;
* a Slurm array job id (``1234``: the sweep), or a job id (``1234``, or ``1234_5`` for one task);
* a unique prefix of a run or sweep id (a sweep's runs count as the sweep);
* a job id that a run recorded after it was indexed;
* a job name (the latest run with that name).

Anything else is a :class:`NotFoundError`; so is a prefix of several, listing them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Union

from ..core.atomic import read_json
from ..core.errors import NotFoundError
from ..core.rundir import RunPaths
from .index import RunRecord, RunStore
from .sweep_record import Sweep

Target = Union[RunRecord, Sweep]
JOB_ID = re.compile(r"\d+(_\d+)?")
SHOWN = 10  # candidates an ambiguous prefix lists


def resolve(store: RunStore, ref: Optional[str]) -> Target:
    """The run (a :class:`RunRecord`) or the sweep (a :class:`~hpcft.runs.sweep_record.Sweep`) ``ref`` names."""
    if ref and ref != "latest":
        folder = Path(ref)
        if RunPaths(folder).record.is_file():
            return store.load(folder)
        sweep = _load_sweep(folder) if folder.is_dir() else None
        if sweep is not None:
            return sweep
    entries = store.entries()
    if not entries:
        raise NotFoundError(f"no runs yet under {store.root}; submit one with: hpcft submit JOB.yaml")
    if not ref or ref == "latest":
        return _run(store, entries[-1])
    return _match(store, entries, ref)


def resolve_run(store: RunStore, ref: Optional[str]) -> RunRecord:
    """The run ``ref`` names; a sweep is refused (which of its runs?) unless it has only one."""
    target = resolve(store, ref)
    if isinstance(target, RunRecord):
        return target
    if len(target.tasks) == 1:
        return store.load(target.task_dirs[0])
    array = f", or {target.array_job_id}_0 ... {target.array_job_id}_{target.size - 1}" if target.array_job_id else ""
    raise NotFoundError(f"'{ref}' is sweep {target.sweep_id} ({target.size} runs): name one of its runs, "
                        f"{target.tasks[0]} ... {target.tasks[-1]}{array} (the best: hpcft show {target.sweep_id})")


def _run(store: RunStore, entry: dict) -> RunRecord:
    return store.load(Path(entry["run_dir"]))


def _load_sweep(folder: Path) -> Optional[Sweep]:
    return Sweep.load(folder)


def _sweep(folder: Path) -> Sweep:
    sweep = _load_sweep(folder)
    if sweep is None:
        raise NotFoundError(f"sweep {folder.name}: its folder {folder} has no sweep record (deleted?)")
    return sweep


def _match(store: RunStore, entries: list[dict], ref: str) -> Target:
    newest = entries[::-1]
    sweeps = {e["sweep"]: Path(e["run_dir"]).parent for e in entries if e.get("sweep")}
    for e in newest:
        if e["run_id"] == ref:
            return _run(store, e)
    if ref in sweeps:
        return _sweep(sweeps[ref])
    for e in newest:
        job_id = str(e.get("job_id") or "")
        if e.get("sweep") and "_" in job_id and job_id.split("_")[0] == ref:
            return _sweep(sweeps[e["sweep"]])
    for e in newest:
        if str(e.get("job_id") or "") == ref:
            return _run(store, e)
    for e in newest:   # the SCOW portal's job that submitted a rerun its allocation could not hold
        if str(e.get("launched_by") or "") == ref:
            return _run(store, e)

    found: dict[str, Path | dict] = {}  # id -> sweep folder or index entry: what the prefix names, oldest first
    for e in entries:
        sid = e.get("sweep")
        if sid and sid.startswith(ref):
            found[sid] = sweeps[sid]
        elif e["run_id"].startswith(ref):
            found[e["run_id"]] = e
    if len(found) == 1:
        [only] = found.values()
        return _sweep(only) if isinstance(only, Path) else _run(store, only)
    if not found and JOB_ID.fullmatch(ref):
        for e in newest:  # the index holds the job id known at submit time; run.json may know it later
            if str((read_json(RunPaths(e["run_dir"]).record) or {}).get("job_id")) == ref:
                return _run(store, e)
    for e in newest:
        if e.get("name") == ref:
            return _run(store, e)
    if found:
        ids = list(found)[::-1]
        more = f" and {len(ids) - SHOWN} more" if len(ids) > SHOWN else ""
        raise NotFoundError(f"'{ref}' matches several runs: {', '.join(ids[:SHOWN])}{more}; "
                            "give more of the id (see: hpcft runs)")
    if Path(ref).is_dir():
        raise NotFoundError(f"{ref}: not an hpcft run folder or sweep folder")
    raise NotFoundError(f"no run or job '{ref}' (see: hpcft runs)")
