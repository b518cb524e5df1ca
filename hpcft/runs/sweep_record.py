"""A sweep's record (``sweep.json`` in the sweep's folder): enough to group, count, cancel and
rank its runs without the job file. Written once by ``submit`` (:mod:`hpcft.submit.sweep`), read
by everything that names a sweep (:mod:`hpcft.runs.ref`, :mod:`hpcft.runs.sweeps`, the CLI), so it
lives with the runs and imports nothing of the submit pipeline."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from ..core.atomic import atomic_write_json, read_json

SWEEP_FILE = "sweep.json"


@dataclass
class Sweep:
    """What ``sweep.json`` holds: enough to group, count, cancel and rank without the job file."""

    sweep_id: str
    name: str
    run_dir: str
    size: int
    points: list[dict[str, Any]]
    tasks: list[str]                     # run ids, in array index order
    submitted_at: str
    array_job_id: Optional[str] = None
    max_parallel: Optional[int] = None
    metric: Optional[str] = None
    goal: str = "max"
    job_file: Optional[str] = None
    partition: Optional[str] = None

    @property
    def task_dirs(self) -> list[Path]:
        return [Path(self.run_dir) / t for t in self.tasks]

    def save(self) -> None:
        atomic_write_json(Path(self.run_dir) / SWEEP_FILE, asdict(self))

    @classmethod
    def load(cls, run_dir: Path | str) -> Optional["Sweep"]:
        data = read_json(Path(run_dir) / SWEEP_FILE)
        if not isinstance(data, dict):
            return None
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
