"""``hpcft status``, ``logs``, ``cancel``: watch a run without ever hanging.

State comes from Slurm (scontrol, then sacct) and, when Slurm has forgotten the
job or the job ran locally, from the run folder (submitit's result file).
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Optional

from ..cluster import slurm
from ..cluster.slurm import TERMINAL_STATES
from ..core.progress_log import last_progress
from ..core.rundir import RunPaths
from .index import RunRecord, RunStore


@dataclass
class Status:
    run_id: str
    job_id: Optional[str]
    state: str
    reason: str = ""
    elapsed_s: Optional[int] = None
    nodes: str = ""
    restarts: int = 0
    exit_code: str = ""
    source: str = ""
    progress: Optional[dict[str, Any]] = None
    error: Optional[str] = None
    hint: Optional[str] = None
    log: Optional[str] = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _result_state(paths: RunPaths, job_id: str) -> tuple[Optional[str], Optional[str]]:
    """COMPLETED/FAILED from submitit's result pickles (one per task). When several ranks
    failed, the earliest failure is the cause; the others are usually its echo."""
    results = list(paths.submitit.glob(f"{job_id}_*_result.pkl"))
    if not results:
        return None, None
    failures: list[tuple[float, str, str]] = []
    for result in results:
        rank = result.name.split("_")[1]
        try:
            with open(result, "rb") as fh:
                outcome, payload = pickle.load(fh)
        except Exception as exc:  # a foreign/corrupt pickle must not break status: report it
            return "FAILED", f"unreadable result file {result}: {exc}"
        if outcome != "success":
            failures.append((result.stat().st_mtime, rank, _last_error_line(str(payload))))
    if failures:
        _, rank, error = min(failures)
        prefix = f"rank {rank}: " if len(results) > 1 or rank != "0" else ""
        return "FAILED", prefix + error
    if not (paths.submitit / f"{job_id}_0_result.pkl").is_file():
        return None, None
    return "COMPLETED", None


def _last_error_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else text


def _local_alive(pid: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    return b"submitit" in cmdline


def _error_from_logs(paths: RunPaths, job_id: str) -> Optional[str]:
    """The most telling line of a failed job's stderr (hpcft's own message first)."""
    for path in (paths.stderr(job_id), paths.stdout(job_id)):
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()[-200:]
        except (FileNotFoundError, OSError):
            continue
        for line in reversed(lines):
            if line.startswith("hpcft: ") and ("fail" in line or "error" in line.lower()):
                return line
        for line in reversed(lines):
            if any(w in line for w in ("Error", "error:", "Exception", "not found")):
                return line.strip()
    return None


def _never_started(paths: RunPaths, why: str) -> str:
    """A training job that waited on its preprocess job (train.preprocess: cpu-job), which failed."""
    from ..core.preprocess import read_record

    rec = read_record(paths.dir)
    if not rec or not rec.get("job_id"):
        return why
    error = rec.get("error") if rec.get("state") == "failed" else None
    if not error:   # the worker died before writing its record: the last line of its log
        err = paths.dir / f"preprocess.{rec['job_id']}.err"
        try:
            error = _last_error_line(err.read_text(encoding="utf-8", errors="replace")) or None
        except OSError:
            error = None
    return (f"its preprocess job {rec['job_id']} failed ({error or 'see preprocess.' + rec['job_id'] + '.err'}); "
            "training never started")


def status(record: RunRecord) -> Status:
    paths = RunPaths(record.run_dir)
    job_id = record.job_id
    st = Status(run_id=record.run_id, job_id=job_id, state=record.state,
                log=str(paths.stdout(job_id)) if job_id else None)
    if job_id is None:
        return st
    if record.executor == "slurm":
        info = slurm.job_info(job_id)
        if info is not None:
            st.state, st.reason, st.elapsed_s = info.state, info.reason, info.elapsed_s
            st.nodes, st.restarts, st.exit_code, st.source = info.nodes, info.restarts, info.exit_code, info.source
            st.extra = info.extra
            never = slurm.dependency_problem(info)
            if never:   # its preprocess job failed: one line that says so, and no orphan left pending
                st.reason = _never_started(paths, never)
                if info.state == "PENDING":
                    slurm.cancel(job_id)
                    st.state = "CANCELLED"
        else:
            state, err = _result_state(paths, job_id)
            st.state, st.source = state or (record.state if record.state in TERMINAL_STATES else "UNKNOWN"), "run"
            st.error = err
            if state is None and st.state == "UNKNOWN":
                st.reason = "Slurm no longer remembers this job and it left no result"
    else:
        state, err = _result_state(paths, job_id)
        if state:
            st.state, st.error = state, err
        elif record.state == "CANCELLED":
            st.state = "CANCELLED"
        elif _local_alive(job_id):
            st.state = "RUNNING"
        else:
            st.state = "FAILED"
            st.reason = "the local job process ended without a result"
        st.source = "local"
    if st.state in ("FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"):
        if not st.error:
            st.error = _result_state(paths, job_id)[1] or _error_from_logs(paths, job_id)
        from .diagnose import diagnose_run

        logs = [paths.stderr(job_id), paths.stdout(job_id)]
        if paths.logs.is_dir():
            logs += sorted(paths.logs.glob(f"job.{job_id}.rank*.out"))
        has_checkpoint = paths.checkpoints.is_dir() and any(paths.checkpoints.iterdir())
        st.hint = diagnose_run(logs, st.state, has_checkpoint)
    st.progress = last_progress(paths.progress)
    if st.state != record.state and st.state != "UNKNOWN":
        record.state = st.state
        try:
            RunStore(paths.dir.parent).save(record)
        except OSError:
            pass  # a read-only run folder (another user's) must not break status
    return st


def cancel(record: RunRecord) -> None:
    if record.job_id is None:
        return
    if record.executor == "slurm":
        slurm.cancel(record.job_id)
        _cancel_preprocess(Path(record.run_dir))
    elif _local_alive(record.job_id):
        os.kill(int(record.job_id), signal.SIGTERM)
    record.state = "CANCELLED"
    RunStore(Path(record.run_dir).parent).save(record)


def _cancel_preprocess(run_dir: Path) -> None:
    """The run's preprocess job too (train.preprocess: cpu-job), while it has not ended: it
    tokenizes for this run only as far as the user knows."""
    from ..core.preprocess import read_record

    rec = read_record(run_dir)
    if rec and rec.get("state") == "queued" and rec.get("job_id"):
        info = slurm.job_info(rec["job_id"])
        if info is not None and not info.terminal:
            slurm.cancel(rec["job_id"])


def log_path(record: RunRecord, err: bool = False, rank: Optional[int] = None) -> Path:
    paths = RunPaths(record.run_dir)
    if rank is not None and rank != 0:
        return paths.rank_log(record.job_id, rank)
    return paths.stderr(record.job_id) if err else paths.stdout(record.job_id)


def follow(record: RunRecord, *, err: bool = False, rank: Optional[int] = None, follow: bool = False,
           out: Optional[IO[str]] = None, note: Optional[IO[str]] = None, poll_s: float = 0.5) -> Status:
    """Print a job's log (to ``out``, notes to ``note``: stdout and stderr as they are at the call);
    with follow=True keep printing until the job ends (across requeues)."""
    out, note = out or sys.stdout, note or sys.stderr
    if record.job_id is None:
        raise ValueError("run has no job id")
    path = log_path(record, err, rank)
    pos = 0
    announced = ""
    last_check = 0.0
    st = status(record)
    while True:
        try:
            size = path.stat().st_size
            if size < pos:  # the file was rewritten (a requeue without append mode)
                pos = 0
            if size > pos:
                with open(path, "rb") as fh:
                    fh.seek(pos)
                    chunk = fh.read(size - pos)
                pos += len(chunk)
                out.write(chunk.decode("utf-8", "replace"))
                out.flush()
        except FileNotFoundError:
            if follow and not st.terminal and announced != st.state:
                reason = f" ({st.reason})" if st.reason and st.reason != "None" else ""
                note.write(f"hpcft: job {record.job_id} is {st.state}{reason}; waiting for {path.name}\n")
                note.flush()
                announced = st.state
        if not follow:
            return st
        if st.terminal:
            # one last read after the job ended, then stop
            try:
                if path.stat().st_size <= pos:
                    return st
            except FileNotFoundError:
                return st
            continue
        time.sleep(poll_s)
        now = time.monotonic()
        if now - last_check >= 2.0:
            last_check = now
            st = status(record)
