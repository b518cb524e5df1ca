"""The compute side's entry point: what runs in each Slurm task (or the local executor's
process) for one hpcft job. Reached from the login side only by name, through
:class:`hpcft.entry.WorkerCall`, so the login side never imports the worker.

    python -m hpcft.worker RUN_DIR     # the same, standalone (exit 75: stopped on USR2, run again)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from hpcft.core.rundir import LaunchSpec
from hpcft.worker import runtime as rt
from hpcft.worker.console import log
from hpcft.worker.timelimit import on_signal

# train.task -> "module:class" of its hpcft.worker.task.Task, imported only when the job runs it
TASKS = {"sequence-classification": "engines.native.classify:SequenceClassification", "causal-lm": "engines.native.causal_lm:CausalLM",
         **{name: "engines.native.preference:Preference" for name in ("dpo", "orpo", "simpo", "kto")}, "grpo": "engines.native.grpo:Grpo",
         "llamafactory": "engines.llamafactory.task:Delegated"}   # the delegated engine: llamafactory-cli train

_PEER_FAILURE = ("Connection closed by peer", "Connection reset by peer", "remote worker crashing",
                 "NCCL communicator was aborted", "ProcessGroupNCCL", "HCCL", "DistNetworkError")
_TEARDOWN_WAIT_S = 120.0


def is_peer_failure(exc: BaseException, world_size: int) -> bool:
    """An error a rank gets because *another* rank died (its collective lost the peer)."""
    if world_size <= 1:
        return False
    text = f"{type(exc).__name__}: {exc}"
    return any(s in text for s in _PEER_FAILURE)


def await_teardown(why: str) -> None:
    """Leave the failure to the rank that caused it: Slurm's --kill-on-bad-exit ends this task
    (SIGTERM, then SIGKILL after KillWait), so `hpcft status` reports the cause, not the echoes."""
    log(f"{why}; waiting for Slurm to end this task")
    time.sleep(_TEARDOWN_WAIT_S)


def task_class(name: str):
    """The :class:`hpcft.worker.task.Task` subclass that implements ``train.task`` ``name``."""
    import importlib

    module, _, cls = TASKS[name].partition(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), cls)


def run(run_dir: str | Path) -> Any:
    started = rt.process_start_time()
    spec = LaunchSpec.read(run_dir)
    rt.apply_env(spec)
    task = rt.prepare_task(spec)
    if spec.kind == "script":
        from hpcft.worker.engines.script import runner as script

        return script.run(spec, task, await_teardown)
    ctx = rt.start(spec, task, started)
    if isinstance(ctx, dict):  # already completed
        return ctx
    task_cls = task_class(ctx.job.train.task)
    try:
        return rt.run_guarded(ctx, lambda c: task_cls(c).run())
    except Exception as exc:
        if is_peer_failure(exc, task.world_size):
            await_teardown(f"a peer rank failed ({type(exc).__name__}: {str(exc)[:200]})")
        raise


def on_timeout(run_dir: str | Path) -> None:
    """submitit's checkpoint hook (USR2 before the time limit), before it requeues the job."""
    spec = LaunchSpec.read(run_dir)
    if spec.kind == "script":
        from hpcft.worker.engines.script import runner as script

        script.stop()
        return
    on_signal(run_dir)


def standalone(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m hpcft.worker RUN_DIR", file=sys.stderr)
        return 2
    run(argv[0])
    return 0
