"""The progress stream, the time-limit signal, NaN guard and best-model saving.

``progress.jsonl`` gets one JSON object per line (``hpcft status`` reads the last):
``{"time", "event", "step", "max_steps", "epoch", "loss", "learning_rate", "eta", "eta_s", ...}``.

Time limits: Slurm sends USR2 ``signal_delay_s`` before the limit. submitit's handler
would checkpoint *now*, in the middle of a step. hpcft installs its own handler that
only sets a flag; :class:`HpcftCallback` sees it at the end of the current optimizer
step, has the Trainer save a checkpoint and stop, and :func:`handoff` then runs
submitit's handler (pickle + ``scontrol requeue`` + exit). Resume is therefore from a
step boundary with optimizer, scheduler, RNG and data position all consistent.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

from .checkpoints import mark_complete
from .errors import NaNLossError

EXIT_REQUEUE = 75  # standalone runs: "stopped on the signal, checkpoint saved; run again to resume"


def log(msg: str) -> None:
    print(f"hpcft: {msg}", flush=True)


def _fmt_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


class ProgressWriter:
    def __init__(self, path: Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled

    def write(self, event: str, **fields: Any) -> None:
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), "event": event, **fields}
        line = json.dumps(record, default=float, allow_nan=True) + "\n"
        with open(self.path, "a", encoding="utf-8") as fh:  # one write per line: readers see whole lines
            fh.write(line)


# --------------------------------------------------------------------------- signal

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


def _dist_world() -> int:
    try:
        import torch.distributed as dist

        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    except (ImportError, RuntimeError):
        return 1


def agree_on_stop(local: bool, device: Any = None) -> bool:
    """All ranks take the stop-at-signal decision together: the max of every rank's flag.

    USR2 reaches each rank at a slightly different step; a rank that stopped alone would
    leave the others waiting in the next collective (a checkpoint save or an all-reduce)
    until the time limit kills the job without a checkpoint. Cost: one 4-byte all-reduce per
    optimizer step, and on GPUs/NPUs one host-device sync per step."""
    if _dist_world() <= 1:
        return local
    import torch
    import torch.distributed as dist

    flag = torch.tensor([1 if local else 0], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def barrier() -> None:
    if _dist_world() > 1:
        import torch.distributed as dist

        dist.barrier()


# --------------------------------------------------------------------------- callback

def make_callback(**kw):
    from transformers import TrainerCallback

    class HpcftCallback(_CallbackMixin, TrainerCallback):
        pass

    return HpcftCallback(**kw)


class _CallbackMixin:
    def __init__(self, *, progress: ProgressWriter, is_main: bool, process_start: float,
                 checkpoint_steps: Optional[int] = None, on_eval: Optional[Callable] = None,
                 save_best: Optional[Callable] = None, restart: int = 0):
        self.progress = progress
        self.is_main = is_main
        self.process_start = process_start
        self.checkpoint_steps = checkpoint_steps
        self.on_eval_hook = on_eval
        self.save_best_hook = save_best
        self.restart = restart
        self.first_step_s: Optional[float] = None
        self.t_begin = 0.0
        self.step_begin = 0
        self.samples_per_step = 1
        self.stopped_for_signal = False

    # -- lifecycle
    def on_train_begin(self, args, state, control, **kw):
        self.t_begin = time.time()
        self.step_begin = state.global_step
        self.samples_per_step = args.train_batch_size * args.gradient_accumulation_steps * max(1, args.world_size)
        SignalState.phase = "train"
        self.progress.write("resume" if state.global_step else "start", step=state.global_step,
                            max_steps=state.max_steps, epoch=state.epoch or 0.0, restart=self.restart)
        if state.global_step:
            log(f"resumed at step {state.global_step}/{state.max_steps} (epoch {state.epoch or 0:.2f})")

    def on_step_end(self, args, state, control, **kw):
        if self.first_step_s is None:
            self.first_step_s = time.time() - self.process_start
            self.progress.write("first_step", step=state.global_step, max_steps=state.max_steps,
                                seconds_since_start=round(self.first_step_s, 3))
        if self.checkpoint_steps and state.global_step % self.checkpoint_steps == 0:
            control.should_save = True
        if not self.stopped_for_signal and agree_on_stop(SignalState.requested, _collective_device(args)):
            if not SignalState.requested:
                log("another rank received the time-limit signal: stopping with it")
            SignalState.requested = True
            self.stopped_for_signal = True
            control.should_save = True
            control.should_training_stop = True
            self.progress.write("signal", step=state.global_step, max_steps=state.max_steps,
                                epoch=state.epoch, restart=self.restart)
        return control

    def on_epoch_end(self, args, state, control, **kw):
        if self.stopped_for_signal:  # already saved at the step; no eval in the grace period
            control.should_evaluate = False
            control.should_save = False
        return control

    def on_save(self, args, state, control, **kw):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        barrier()  # every rank's part (DeepSpeed shards, RNG states) is on disk before the marker
        if self.is_main and folder.is_dir():
            mark_complete(folder, {"step": state.global_step, "epoch": state.epoch, "restart": self.restart})
            self.progress.write("checkpoint", step=state.global_step, epoch=state.epoch, path=str(folder))
        if self.stopped_for_signal:
            SignalState.saved = True
        return control

    def on_log(self, args, state, control, logs=None, **kw):
        logs = dict(logs or {})
        loss = logs.get("loss")
        if isinstance(loss, (int, float)) and not math.isfinite(loss):
            self.progress.write("nan", step=state.global_step, epoch=state.epoch, loss=str(loss),
                                learning_rate=logs.get("learning_rate"))
            raise NaNLossError(
                f"training loss is {loss} at step {state.global_step} (epoch {state.epoch:.2f}, "
                f"learning rate {logs.get('learning_rate')}); stopped. Lower train.learning_rate, add warmup "
                "(train.warmup_ratio), or use precision bf16/fp32 instead of fp16")
        if "loss" not in logs:
            return control
        done = state.global_step - self.step_begin
        elapsed = time.time() - self.t_begin
        rate = done / elapsed if elapsed > 0 and done > 0 else 0.0
        eta_s = (state.max_steps - state.global_step) / rate if rate else None
        self.progress.write("train", step=state.global_step, max_steps=state.max_steps,
                            epoch=round(state.epoch or 0.0, 4), loss=loss,
                            learning_rate=logs.get("learning_rate"), grad_norm=logs.get("grad_norm"),
                            samples_per_s=round(rate * self.samples_per_step, 2) if rate else None,
                            eta=_fmt_eta(eta_s) if eta_s is not None else None,
                            eta_s=round(eta_s, 1) if eta_s is not None else None, restart=self.restart)
        if self.is_main:
            eta = f", eta {_fmt_eta(eta_s)}" if eta_s is not None else ""
            lr = logs.get("learning_rate")
            lr_s = f", lr {lr:.3g}" if isinstance(lr, (int, float)) else ""
            log(f"step {state.global_step}/{state.max_steps} epoch {state.epoch or 0:.2f} "
                f"loss {loss:.4f}{lr_s}{eta}")
        return control

    def on_evaluate(self, args, state, control, metrics=None, **kw):
        metrics = {k.removeprefix("eval_"): v for k, v in (metrics or {}).items()}
        self.progress.write("eval", step=state.global_step, epoch=state.epoch, metrics=metrics,
                            restart=self.restart)
        if self.is_main:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                              if isinstance(v, float) and k not in ("runtime", "samples_per_second",
                                                                     "steps_per_second", "epoch"))
            log(f"eval at epoch {state.epoch or 0:.2f}: {shown}")
        if self.save_best_hook is not None:
            self.save_best_hook(metrics, state, kw.get("model"))
        if self.on_eval_hook is not None:
            self.on_eval_hook()
        return control


def _collective_device(args: Any) -> Any:
    """Where the stop flag lives: the rank's device for nccl/hccl, the CPU for gloo."""
    device = getattr(args, "device", None)
    return device if getattr(device, "type", "cpu") in ("cuda", "npu") else None
