"""Watching a sweep (login side): count its tasks by state (one controller call for the whole
array), cancel it, rank its points by their metric. A reference names a sweep through
:mod:`hpcft.runs.ref`."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..cluster import slurm
from ..cluster.slurm import TERMINAL_STATES
from ..core.errors import NotFoundError
from ..core.rundir import RunPaths
from .index import RunRecord, RunStore
from .sweep_record import Sweep


def records(store: RunStore, sweep: Sweep) -> list[RunRecord]:
    return [store.load(d) for d in sweep.task_dirs]


def task_states(sweep: Sweep, recs: list[RunRecord]) -> list[str]:
    """Each task's state: the controller's view of the array (one call), then, for tasks it has
    forgotten, what the task's run folder says (monitor.status)."""
    from .monitor import status

    live = slurm.array_states(sweep.array_job_id) if sweep.array_job_id else {}
    states = []
    for index, rec in enumerate(recs):
        if index in live:
            state = live[index]
            if state != rec.state and state in TERMINAL_STATES:
                rec.state = state
                _save(rec)
        elif rec.state in TERMINAL_STATES:
            state = rec.state
        else:
            state = status(rec).state
        states.append(state)
    return states


def _save(rec: RunRecord) -> None:
    try:
        RunStore(Path(rec.run_dir).parent).save(rec)
    except OSError:
        return  # a read-only sweep (another user's) still shows its states


def counts(states: list[str]) -> str:
    """'5 COMPLETED, 3 RUNNING, 1 PENDING' (most first)."""
    return ", ".join(f"{n} {state}" for state, n in Counter(states).most_common())


def cancel(sweep: Sweep, recs: list[RunRecord]) -> int:
    """scancel the array job: every task, queued or running. Returns how many were not done."""
    if not sweep.array_job_id:
        raise NotFoundError(f"sweep {sweep.sweep_id} has no array job id")
    slurm.cancel(sweep.array_job_id)
    open_tasks = 0
    for rec in recs:
        if rec.state not in TERMINAL_STATES:
            rec.state = "CANCELLED"
            _save(rec)
            open_tasks += 1
    return open_tasks


@dataclass
class Ranked:
    index: int
    run_id: str
    point: dict[str, Any]
    state: str
    metric: Optional[str]
    value: Optional[float]


def _metric(run_dir: str, name: Optional[str]) -> tuple[Optional[str], Optional[float]]:
    try:
        data = json.loads(RunPaths(run_dir).metrics.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return name, None
    metric = name or data.get("headline")
    value = (data.get("eval") or {}).get(metric) if metric else None
    return metric, float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def rank(sweep: Sweep, recs: list[RunRecord], states: list[str]) -> list[Ranked]:
    """Points with a result first, best first (by the sweep's metric, else each run's headline)."""
    rows = []
    for index, (rec, state) in enumerate(zip(recs, states)):
        metric, value = _metric(rec.run_dir, sweep.metric)
        rows.append(Ranked(index, rec.run_id, sweep.points[index], state, metric, value))
    sign = -1 if sweep.goal == "max" else 1
    return sorted(rows, key=lambda r: (r.value is None, sign * r.value if r.value is not None else 0, r.index))
