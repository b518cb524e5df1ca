"""hpcft's Trainer callback, which every built-in task adds: it writes the progress stream
(:mod:`hpcft.worker.progress`), stops at a step boundary on the time-limit signal
(:mod:`hpcft.worker.timelimit`), marks each checkpoint complete once every rank wrote its part,
stops on a NaN loss, and calls the task's hooks after an evaluation (save the best model,
draw the curves)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Optional

from hpcft.worker.checkpoints import mark_complete
from hpcft.worker.collective import agree_on_stop, barrier
from hpcft.worker.console import log
from hpcft.worker.errors import NaNLossError
from hpcft.worker.progress import ProgressWriter
from hpcft.worker.timelimit import SignalState


def _fmt_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


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
