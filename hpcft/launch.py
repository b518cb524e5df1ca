"""What submitit runs on the compute node: :class:`Worker`.

This module is imported on the login node too (to pickle a Worker), so it
imports nothing heavy at module level. The launch spec (``launch.json`` in the
run folder) carries what the batch script exports, so the local executor, which
runs no sbatch script, gets the same environment.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

try:  # submitit is a base dependency; Checkpointable gives requeue-on-timeout
    from submitit.helpers import Checkpointable
except ImportError:  # pragma: no cover - only when imported without submitit
    Checkpointable = object  # type: ignore[misc,assignment]


def read_spec(run_dir: str | Path) -> dict[str, Any]:
    with open(Path(run_dir) / "launch.json", encoding="utf-8") as fh:
        return json.load(fh)


def apply_env(spec: dict[str, Any]) -> None:
    """Export the offline/cache variables and the job's own before anything imports HF libraries."""
    env = dict(spec.get("env", {}))
    if "PYTHONPATH" in env and os.environ.get("PYTHONPATH"):  # prepend, as the batch script does
        env["PYTHONPATH"] = f"{env['PYTHONPATH']}:{os.environ['PYTHONPATH']}"
    os.environ.update(env)


class Worker(Checkpointable):
    """Runs one hpcft job: the built-in trainer or the user's script."""

    def __init__(self, run_dir: str):
        self.run_dir = str(run_dir)

    def __call__(self) -> Any:
        spec = read_spec(self.run_dir)
        apply_env(spec)
        prepare_task(self.run_dir, spec)
        if spec["kind"] == "script":
            return run_script(spec)
        from .worker import train  # heavy imports happen here, on the compute node

        try:
            return train.main(self.run_dir)
        except Exception as exc:
            if is_peer_failure(exc):
                _await_teardown(f"a peer rank failed ({type(exc).__name__}: {str(exc)[:200]})")
            raise

    def checkpoint(self, *args: Any, **kwargs: Any):  # called by submitit on USR2 (time limit)
        spec = read_spec(self.run_dir)
        if spec["kind"] == "script":
            # A user's script cannot be checkpointed from outside: stop it and requeue, the
            # script sees HPCFT_RESTART and SLURM_RESTART_COUNT and may resume by itself.
            _stop_child()
            return super().checkpoint(*args, **kwargs)
        from .worker import train

        train.on_signal(self.run_dir)
        return super().checkpoint(*args, **kwargs)


_CHILD: subprocess.Popen | None = None
_TEARDOWN_WAIT_S = 120.0


def _stop_child() -> None:
    if _CHILD is not None and _CHILD.poll() is None:
        _CHILD.send_signal(signal.SIGTERM)
        try:
            _CHILD.wait(timeout=30)
        except subprocess.TimeoutExpired:
            _CHILD.kill()


_PEER_FAILURE = ("Connection closed by peer", "Connection reset by peer", "remote worker crashing",
                 "NCCL communicator was aborted", "ProcessGroupNCCL", "HCCL", "DistNetworkError")


def is_peer_failure(exc: BaseException) -> bool:
    """An error a rank gets because *another* rank died (its collective lost the peer)."""
    if int(os.environ.get("SLURM_NTASKS", "1") or 1) <= 1:
        return False
    text = f"{type(exc).__name__}: {exc}"
    return any(s in text for s in _PEER_FAILURE)


def _await_teardown(why: str) -> None:
    """Leave the failure to the rank that caused it: Slurm's --kill-on-bad-exit ends this task
    (SIGTERM, then SIGKILL after KillWait), so `hpcft status` reports the cause, not the echoes."""
    print(f"hpcft: {why}; waiting for Slurm to end this task", flush=True)
    time.sleep(_TEARDOWN_WAIT_S)


def set_rank_env() -> None:
    """torch.distributed's env:// variables, from this task's own Slurm variables
    (expanded here, inside the task, never in the batch shell)."""
    from .ranklog import task_ids

    rank, local, world = task_ids()
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(local), WORLD_SIZE=str(world))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(20000 + int(os.environ.get("SLURM_JOB_ID", "0") or 0) % 10000))


def ops_cache_dir(env: dict | None = None) -> str | None:
    """Where compiled torch/DeepSpeed ops go: inside the hpcft cache, one folder per user (a
    build dir holds a lock file its user must write), so the 33-70 s first-use build of
    DeepSpeed's ops is paid once, not by every job."""
    env = os.environ if env is None else env
    cache = env.get("HPCFT_CACHE")
    if not cache:
        return None
    import getpass

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return str(Path(cache) / "ops" / user / "torch_extensions")


def prepare_task(run_dir: str | Path, spec: dict[str, Any]) -> None:
    """Per task, before anything heavy: its own log file, its rank variables, its devices,
    and the compiled-ops cache."""
    from .ranklog import setup_rank_logs, task_rank

    setup_rank_logs(run_dir)
    if spec.get("kind") == "script" or task_rank()[1] > 1:
        set_rank_env()  # one-process train jobs stay out of torch.distributed entirely
    ops = ops_cache_dir()
    if ops and "TORCH_EXTENSIONS_DIR" not in os.environ:
        try:
            Path(ops).mkdir(parents=True, exist_ok=True)
            os.environ["TORCH_EXTENSIONS_DIR"] = ops
        except OSError:
            pass  # a read-only cache: torch falls back to ~/.cache/torch_extensions
    if spec.get("device") == "npu":
        from .worker.device import setup_npu_env

        setup_npu_env()


class ScriptFailed(RuntimeError):
    pass


def run_script(spec: dict[str, Any]) -> int:
    """Run the user's script with the job's interpreter; its output goes to the job log."""
    global _CHILD
    set_rank_env()
    cmd = [sys.executable, "-u", spec["script"], *spec.get("args", [])]
    print(f"hpcft: running {' '.join(cmd)} in {spec['workdir']}", flush=True)
    _CHILD = subprocess.Popen(cmd, cwd=spec["workdir"])
    code = _CHILD.wait()
    if code == -signal.SIGTERM and int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1:
        # Slurm is ending the step (another rank failed: --kill-on-bad-exit, or a cancel): this
        # task is not the cause, so it leaves no failure of its own for `hpcft status` to report
        # first; SIGKILL follows after KillWait.
        _await_teardown("stopped by SIGTERM: the job is ending (another rank failed, or it was cancelled)")
    if code != 0:
        raise ScriptFailed(f"{spec['script']} exited with status {code}")
    return code
