"""Run folders and the runs index.

One folder per submit under ``Settings.runs``::

    <run_id>/
      job.yaml            the resolved job (all config layers applied)
      job.source.yaml     the job file as the user wrote it
      job.sh              the rendered sbatch script
      run.json            run record: ids, paths, executor, last known state
      job.<jobid>.out/err logs, named as SCOW users expect
      submitit/           submitit's pickles and per-task logs
      output/             default output_dir
      progress.jsonl, metrics.json, ...   written by the worker

The index (``index.jsonl``) is append-only under a lock, so concurrent submits
never lose each other's lines; run.json is replaced atomically.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from .atomic import atomic_write_json, file_lock, read_json
from .errors import NotFoundError


@dataclass
class RunRecord:
    run_id: str
    name: str
    run_dir: str
    job_file: Optional[str]
    kind: str                      # train | script
    executor: str                  # slurm | local
    submitted_at: str
    job_id: Optional[str] = None
    state: str = "NEW"
    partition: Optional[str] = None
    cluster: Optional[str] = None
    history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict) -> "RunRecord":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class RunPaths:
    """The one place that knows where things live in a run folder."""

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir)

    @property
    def run_id(self) -> str:
        return self.dir.name

    record = property(lambda self: self.dir / "run.json")
    job_yaml = property(lambda self: self.dir / "job.yaml")
    source_yaml = property(lambda self: self.dir / "job.source.yaml")
    script = property(lambda self: self.dir / "job.sh")
    submitit = property(lambda self: self.dir / "submitit")
    output = property(lambda self: self.dir / "output")
    progress = property(lambda self: self.dir / "progress.jsonl")
    metrics = property(lambda self: self.dir / "metrics.json")
    status = property(lambda self: self.dir / "status.json")
    logs = property(lambda self: self.dir / "logs")

    def stdout(self, job_id: str) -> Path:
        return self.dir / f"job.{job_id}.out"

    def stderr(self, job_id: str) -> Path:
        return self.dir / f"job.{job_id}.err"

    def rank_log(self, job_id: str, rank: int) -> Path:
        return self.logs / f"job.{job_id}.rank{rank}.out"


def _slug(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.")[:40]
    return slug or "job"


def new_run_dir(runs_root: Path, name: str) -> RunPaths:
    """Create a fresh, unique run folder (mkdir is atomic: no two submits share one)."""
    runs_root.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    while True:
        run_dir = runs_root / f"{stamp}-{_slug(name)}-{secrets.token_hex(2)}"
        try:
            run_dir.mkdir()
            return RunPaths(run_dir)
        except FileExistsError:
            continue


class RunStore:
    def __init__(self, runs_root: Path):
        self.root = Path(runs_root)
        self.index = self.root / "index.jsonl"
        self.lock = self.root / ".index.lock"

    def save(self, record: RunRecord) -> None:
        atomic_write_json(Path(record.run_dir) / "run.json", asdict(record))

    def add(self, record: RunRecord) -> None:
        """Write run.json, then append the run to the index under the lock."""
        self.save(record)
        line = json.dumps({"run_id": record.run_id, "name": record.name, "job_id": record.job_id,
                           "submitted_at": record.submitted_at, "run_dir": record.run_dir}) + "\n"
        with file_lock(self.lock):
            fd = os.open(self.index, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, line.encode())
                os.fsync(fd)
            finally:
                os.close(fd)

    def load(self, run_dir: Path) -> RunRecord:
        data = read_json(Path(run_dir) / "run.json")
        if data is None:
            raise NotFoundError(f"{run_dir}: not an hpcft run folder (no run.json)")
        return RunRecord.from_dict(data)

    def entries(self) -> list[dict[str, Any]]:
        if not self.index.is_file():
            return []
        out = []
        for line in self.index.read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a torn line from a crashed writer: the others are still good
        return out

    def records(self, limit: Optional[int] = None) -> list[RunRecord]:
        entries = self.entries()
        if limit:
            entries = entries[-limit:]
        out = []
        for entry in entries:
            try:
                out.append(self.load(Path(entry["run_dir"])))
            except NotFoundError:
                continue  # run folder deleted by the user
        return out

    def find(self, ref: Optional[str]) -> RunRecord:
        """A run by id, id prefix, Slurm job id, run folder path, or the latest when ref is None."""
        if ref and Path(ref).is_dir() and (Path(ref) / "run.json").is_file():
            return self.load(Path(ref))
        entries = self.entries()
        if not entries:
            raise NotFoundError(f"no runs yet under {self.root}; submit one with: hpcft submit JOB.yaml")
        if ref is None or ref == "latest":
            return self.load(Path(entries[-1]["run_dir"]))
        for entry in reversed(entries):
            if entry["run_id"] == ref:
                return self.load(Path(entry["run_dir"]))
        matches = [e for e in entries if e["run_id"].startswith(ref) or str(e.get("job_id")) == ref]
        if ref.isdigit():
            # job ids may also be recorded later (index lines hold the id known at submit time)
            matches = matches or [e for e in entries if self._job_id_of(e) == ref]
        if not matches:
            raise NotFoundError(f"no run or job '{ref}' (see: hpcft runs)")
        if len({m["run_id"] for m in matches}) > 1 and not ref.isdigit():
            ids = ", ".join(m["run_id"] for m in matches[:5])
            raise NotFoundError(f"'{ref}' matches several runs: {ids}")
        return self.load(Path(matches[-1]["run_dir"]))

    def _job_id_of(self, entry: dict) -> Optional[str]:
        data = read_json(Path(entry["run_dir"]) / "run.json") or {}
        return str(data.get("job_id"))


def now_iso() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")
