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
        if spec["kind"] == "script":
            return run_script(spec)
        from .worker import train  # heavy imports happen here, on the compute node

        return train.main(self.run_dir)

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


def _stop_child() -> None:
    if _CHILD is not None and _CHILD.poll() is None:
        _CHILD.send_signal(signal.SIGTERM)
        try:
            _CHILD.wait(timeout=30)
        except subprocess.TimeoutExpired:
            _CHILD.kill()


def set_rank_env() -> None:
    """torch.distributed's env:// variables, from this task's own Slurm variables
    (expanded here, inside the task, never in the batch shell)."""
    rank = os.environ.get("SLURM_PROCID", os.environ.get("SUBMITIT_LOCAL_GLOBALID", "0"))
    local = os.environ.get("SLURM_LOCALID", os.environ.get("SUBMITIT_LOCAL_LOCALID", "0"))
    world = os.environ.get("SLURM_NTASKS", os.environ.get("SUBMITIT_LOCAL_NTASKS", "1"))
    os.environ.update(RANK=rank, LOCAL_RANK=local, WORLD_SIZE=world)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(20000 + int(os.environ.get("SLURM_JOB_ID", "0") or 0) % 10000))


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
    if code != 0:
        raise ScriptFailed(f"{spec['script']} exited with status {code}")
    return code
