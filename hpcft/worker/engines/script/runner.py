"""``script:`` jobs: the user's own script, run unmodified with the job's interpreter and the
offline environment; its output goes to the job log."""

from __future__ import annotations

import signal
import subprocess
import sys

from hpcft.core.rundir import LaunchSpec
from hpcft.worker.console import log
from hpcft.worker.errors import ScriptFailed
from hpcft.worker.taskenv import TaskEnv

_CHILD: subprocess.Popen | None = None


def run(spec: LaunchSpec, task: TaskEnv, on_teardown) -> int:
    global _CHILD
    cmd = [sys.executable, "-u", spec.script, *spec.args]
    log(f"running {' '.join(cmd)} in {spec.workdir}")
    _CHILD = subprocess.Popen(cmd, cwd=spec.workdir)
    code = _CHILD.wait()
    if code == -signal.SIGTERM and task.world_size > 1:
        # Slurm is ending the step (another rank failed: --kill-on-bad-exit, or a cancel): this
        # task is not the cause, so it leaves no failure of its own for `hpcft status` to report
        # first; SIGKILL follows after KillWait.
        on_teardown("stopped by SIGTERM: the job is ending (another rank failed, or it was cancelled)")
    if code != 0:
        raise ScriptFailed(f"{spec.script} exited with status {code}")
    return code


def stop() -> None:
    """Time limit: a user's script cannot be checkpointed from outside. Stop it; the requeued
    job sees HPCFT_RESTART and SLURM_RESTART_COUNT and may resume by itself."""
    if _CHILD is not None and _CHILD.poll() is None:
        _CHILD.send_signal(signal.SIGTERM)
        try:
            _CHILD.wait(timeout=30)
        except subprocess.TimeoutExpired:
            _CHILD.kill()
