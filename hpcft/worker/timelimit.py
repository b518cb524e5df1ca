"""The time limit: from Slurm's USR2 to a checkpoint at a step boundary and the requeue.

Slurm sends USR2 ``signal_delay_s`` before the limit. submitit's handler would checkpoint
*now*, in the middle of a step. hpcft installs its own handler that only sets a flag; the
Trainer callback (:mod:`hpcft.worker.callback`) sees it at the end of the current optimizer
step, has the Trainer save a checkpoint and stop, and :func:`handoff` then runs submitit's
handler (pickle + ``scontrol requeue`` + exit). Resume is therefore from a step boundary with
optimizer, scheduler, RNG and data position all consistent.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from hpcft.core.rundir import RunPaths
from hpcft.worker.console import log, warn
from hpcft.worker.progress import ProgressWriter

EXIT_REQUEUE = 75  # standalone runs: "stopped on the signal, checkpoint saved; run again to resume"


class SignalState:
    """Module-level state shared by the handler, the callback and :func:`on_signal`."""

    phase = "setup"             # setup | train | finish
    requested = False           # USR2 seen during training
    saved = False               # the stop checkpoint was written
    previous: Any = None        # submitit's handler (or the default)
    signum = getattr(signal, "SIGUSR2", None)


def install_signal_handler() -> None:
    if SignalState.signum is None:
        return
    SignalState.previous = signal.getsignal(SignalState.signum)
    signal.signal(SignalState.signum, _handler)


def _handler(signum, frame) -> None:
    if SignalState.phase == "train":
        if not SignalState.requested:
            log("time-limit signal received: saving a checkpoint at the end of this step, then requeueing")
        SignalState.requested = True
    elif SignalState.phase == "finish":
        log("time-limit signal received while saving the final model: finishing first")
    else:
        log("time-limit signal received before training started: requeueing (resume from the last checkpoint)")
        handoff()


def handoff() -> None:
    """Give the signal to submitit (checkpoint() + requeue + exit), or exit for a standalone run."""
    prev = SignalState.previous
    if callable(prev) and prev not in (signal.SIG_IGN, signal.SIG_DFL):
        prev(SignalState.signum, None)
        return
    log(f"stopped on the time-limit signal; run again to resume (exit {EXIT_REQUEUE})")
    sys.exit(EXIT_REQUEUE)


def await_requeue(limit_s: float = 300.0) -> None:
    """A rank other than 0 after the stop checkpoint: only rank 0 requeues (submitit), and the
    requeue ends every task. Returning instead would record this rank as finished; if no requeue
    comes (rank 0 failed), exit non-zero so ``--kill-on-bad-exit`` ends the job."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        time.sleep(1.0)
    log(f"rank 0 did not requeue the job within {limit_s:.0f} s; stopping")
    os._exit(EXIT_REQUEUE)


def on_signal(run_dir: str | Path) -> None:
    """submitit's USR2 handler calls this (through :class:`hpcft.entry.WorkerCall`) before the
    requeue. The consistent checkpoint was already written at a step boundary by the callback
    (or training had not started: the previous checkpoint is the resume point); record it."""
    paths = RunPaths(run_dir)
    state = "checkpoint saved" if SignalState.saved else "no new checkpoint (training not running)"
    log(f"requeueing: {state}")
    try:
        ProgressWriter(paths.progress).write("requeue_handoff", saved=SignalState.saved)
    except OSError as exc:
        warn(f"cannot record the requeue in {paths.progress}: {exc}")
