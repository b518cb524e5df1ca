"""The skeleton of every built-in task: the same named phases in each, as torchtune's recipes
follow ``FTRecipeInterface``, so "where is the model saved" has one answer (:meth:`Task.save`).

    setup     the task's own: device, tokenizer, data, model, TrainingArguments and Trainer
    train     resume from the latest complete checkpoint and train; stopped by the time-limit
              signal, hand over for the requeue (the run ends there and resumes in the next leg)
    evaluate  the final evaluation
    save      the final model and tokenizer, in the job's output folder
    conclude  every rank records its telemetry; rank 0 writes metrics.json, the ``done`` event
              and curves.png, marks the run COMPLETED and removes the checkpoints

:meth:`Task.run` calls them in this order. A task (:mod:`hpcft.worker.engines.native.classify`,
:mod:`hpcft.worker.engines.native.causal_lm`) subclasses :class:`Task`, fills in :meth:`Task.setup`, and says
what its metrics.json holds besides the common figures (:meth:`Task.headline`,
:meth:`Task.train_figures`, :meth:`Task.results`); it may extend a phase (causal-lm answers a
few held-out prompts at the start of conclude). torch and transformers are imported inside
the methods.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from hpcft.worker import telemetry as tele
from hpcft.worker.console import log
from hpcft.worker.runtime import Context, status
from hpcft.worker.timelimit import SignalState, await_requeue, handoff
from hpcft.worker.trainer import callbacks


@dataclass
class TrainedLeg:
    """What :meth:`Task.train` hands on when training finished in this leg."""

    result: Any            # the Trainer's TrainOutput
    seconds: float         # wall time of trainer.train() in this leg


class Task:
    """One built-in training task; see the module docstring for its phases."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.cfg = ctx.job.train      # the job's train: section
        self.device: Any = None       # hpcft.worker.device.Device, from :meth:`begin`
        self.tokenizer: Any = None    # saved with the model
        self.trainer: Any = None      # from :meth:`build_trainer`
        self.checkpointing: Optional[dict] = None   # {"on", "why"}: :meth:`decide_checkpointing`

    def run(self) -> dict:
        """The phases in order; the metrics.json content on rank 0 ({} on the other ranks and
        after a hand-over for the requeue)."""
        self.setup()
        self.loaded_as_checked()
        leg = self.train()
        if leg is None:  # stopped for the time limit: the job is being requeued
            return {}
        final = self.evaluate()
        output_dir = self.save()
        metrics = self.conclude(leg, final, output_dir)
        if metrics and getattr(self.cfg, "eval_tasks", None):  # rank 0: the benchmarks, the job's last step
            self.benchmark(output_dir)
        return metrics

    # ------------------------------------------------------------------ 1. setup (the task's own)

    def setup(self) -> None:
        """Build everything :meth:`train` needs; set ``self.tokenizer`` and ``self.trainer``
        (through :meth:`build_trainer`). Starts with :meth:`begin`."""
        raise NotImplementedError

    def loaded_as_checked(self) -> None:
        """After setup has read every asset: another user's copy that changed meanwhile (between
        the look-up at start and the reads) stops the job before a step trains on it."""
        from hpcft.core.assets import changed_since_checked
        from hpcft.core.errors import TrustError

        changed = changed_since_checked(self.ctx.assets)
        if changed:
            raise TrustError("\n".join(changed))

    def begin(self, *, device_note: str = "") -> None:
        """The start of every setup: quiet HF libraries, say what runs where, pick the device
        (``self.device``), seed."""
        import datasets
        import transformers

        from hpcft.worker.device import detect, dist_backend

        transformers.logging.set_verbosity_warning()
        transformers.utils.logging.disable_progress_bar()
        datasets.disable_progress_bars()
        t, task = self.cfg, self.ctx.task
        model_ref = self.ctx.assets[0]
        log(f"model {t.model} -> {model_ref.path}")
        for e, ref in zip(t.dataset_entries, self.ctx.assets[1:], strict=False):
            log(f"dataset {e.name}{' ' + ref.config if ref.config else ''} -> {ref.path}")
        self.device = detect(self.ctx.device, t.precision)
        log(f"device {self.device.name}, precision {self.device.precision}, rank {task.rank}/{task.world_size}"
            f"{device_note}")
        if task.world_size > 1 and task.is_main:
            log(f"rendezvous {task.master_addr}:{task.master_port}, {task.world_size} ranks, "
                f"backend {dist_backend(self.device.kind)}")
        transformers.set_seed(t.seed)

    def decide_checkpointing(self) -> bool:
        """``train.gradient_checkpointing`` as the job says, or, left out, from the memory estimate
        against what this rank's device has free (:func:`hpcft.core.memory.plan.checkpointing`):
        recomputing activations that would fit anyway only slows the run. Said in the log and
        recorded in metrics.json."""
        from hpcft.core.memory.plan import checkpointing
        from hpcft.worker.device import free_memory_gib

        task = self.ctx.task
        free = None
        if self.cfg.gradient_checkpointing is None:
            free = free_memory_gib(self.device.kind, max(1, task.world_size // max(1, task.nodes)))
        on, why = checkpointing(self.ctx.job, self.ctx.paths.dir, self.ctx.assets[0].path,
                                precision=self.device.precision, free_gib=free)
        self.checkpointing = {"on": on, "why": why}
        if task.is_main:
            log(f"gradient checkpointing {why}")
        return on

    def build_trainer(self, trainer_cls, *, save_best: Optional[Callable] = None, **trainer_kw) -> Any:
        """``self.trainer``: ``trainer_cls`` (:func:`hpcft.worker.trainer.trainer_class` or a
        subclass) with hpcft's callbacks; rank 0 redraws the curves after every evaluation."""
        from transformers.trainer_callback import PrinterCallback

        on_eval = self.plot if self.ctx.task.is_main else None
        self.trainer = trainer_cls(**trainer_kw, callbacks=callbacks(self.ctx, save_best=save_best,
                                                                     on_eval=on_eval))
        self.trainer.remove_callback(PrinterCallback)  # our own log lines instead
        return self.trainer

    # ------------------------------------------------------------------ 2. train

    def train(self) -> Optional[TrainedLeg]:
        """Resume from the latest complete checkpoint and train. None when this leg stopped for
        the time limit (checkpoint saved, handed over for the requeue)."""
        resume = self._resume_point()
        t0 = time.time()
        result = self.trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        seconds = time.time() - t0
        if self._handed_over():
            return None
        return TrainedLeg(result, seconds)

    def _resume_point(self) -> Optional[Path]:
        """The latest complete checkpoint (incomplete ones, from a write that never finished, removed)."""
        from hpcft.worker import checkpoints as ck

        ctx = self.ctx
        ckpt_dir = ctx.paths.checkpoints
        for p in (ck.remove_incomplete(ckpt_dir) if ctx.task.is_main else []):
            log(f"removed incomplete checkpoint {p.name} (a write that never finished)")
        resume = ck.latest_complete(ckpt_dir)
        if resume:
            log(f"resuming from {resume.name} (restart {ctx.restart})")
        return resume

    def _handed_over(self) -> bool:
        """After ``trainer.train()``: True when it stopped for the time limit (checkpoint saved, the
        job is being requeued), False when training finished."""
        ctx, state = self.ctx, self.trainer.state
        if not (SignalState.requested and state.global_step < state.max_steps):
            SignalState.phase = "finish"
            return False
        tele.end_leg(ctx)  # this leg's time and throughput, for the final metrics.json
        ctx.writer.write("requeue", step=state.global_step, saved=SignalState.saved, restart=ctx.restart)
        log(f"checkpoint at step {state.global_step} saved; handing over for requeue")
        handoff()
        if not ctx.task.is_main:
            await_requeue()  # rank 0 requeues the job; Slurm ends this task with it
        return True

    # ------------------------------------------------------------------ 3. evaluate

    def evaluate(self) -> dict:
        """The final eval metrics (without the ``eval_`` prefix). Evaluates again only if the
        Trainer's own log (restored on resume, the same on every rank: evaluate is collective)
        has no evaluation at the final step."""
        trainer = self.trainer
        if trainer.eval_dataset is None:   # eval_split: none, or a stream: nothing is held out
            return {}
        with tele.timed("eval"):
            evals = [h for h in trainer.state.log_history if "eval_loss" in h]
            if not evals or evals[-1].get("step") != trainer.state.global_step:
                trainer.evaluate()
                evals = [h for h in trainer.state.log_history if "eval_loss" in h]
        return {k.removeprefix("eval_"): v for k, v in evals[-1].items()
                if k != "num_input_tokens_seen"} if evals else {}  # a training counter, not an eval metric

    # ------------------------------------------------------------------ 4. save

    def save(self) -> Path:
        """The final model (or adapter) and the tokenizer in the job's output folder. Every rank
        calls it (under ZeRO-3 the weights are gathered from all); rank 0 writes."""
        out = self.ctx.output_dir
        with tele.timed("save"):
            self.trainer.save_model(str(out))
            if self.ctx.task.is_main and getattr(self.trainer.model, "hpcft_pissa_init", None):
                from hpcft.worker.engines.native.lora_switches import save_converted

                save_converted(self.trainer.model, out)   # a PiSSA adapter as LoRA on the unchanged base
            if self.ctx.task.is_main:
                out.mkdir(parents=True, exist_ok=True)
                self.tokenizer.save_pretrained(str(out))
                for p in out.iterdir():  # safetensors writes 0600; outputs are shared with the group
                    if p.is_file():
                        p.chmod(0o644)
        return out

    # ------------------------------------------------------------------ 5. conclude

    def conclude(self, leg: TrainedLeg, final: dict, output_dir: Path) -> dict:
        """Every rank records its telemetry; rank 0 writes metrics.json and the ``done`` event,
        draws the curves and marks the run complete (a requeue will not retrain). Returns the
        metrics ({} on the other ranks)."""
        from hpcft.worker.device import peak_memory_mb
        from hpcft.worker.results import eval_history, read_progress, write_metrics

        ctx, t, state = self.ctx, self.cfg, self.trainer.state
        telemetry = tele.finish(ctx, self.device)  # every rank records its memory; rank 0 gets the run's figures
        if not ctx.task.is_main:
            return {}
        records = read_progress(ctx.paths.progress)
        first = next((r for r in records if r.get("event") == "first_step"), None)
        legs = [r for r in records if r.get("event") in ("start", "resume")]
        steps_this_leg = state.global_step - (legs[-1].get("step", 0) if legs else 0)
        if not final and isinstance(leg.result.training_loss, (int, float)):
            final = {"train_loss": leg.result.training_loss}   # nothing evaluated: the run leads with its training loss
        headline = "train_loss" if set(final) == {"train_loss"} else self.headline(final)
        train_metrics = {
            "runtime_s": round(leg.seconds, 3),
            **self.train_figures(leg, steps_this_leg, records),
            "global_step": state.global_step,
            "epochs": state.epoch,
            "loss": leg.result.training_loss,
            "trainer": dict(leg.result.metrics or {}),
        }
        metrics = write_metrics(
            ctx.paths.metrics, headline=headline, eval_metrics=final, train_metrics=train_metrics,
            history=eval_history(records), device=self.device.as_dict(),
            extra={"completed": True, "restarts": ctx.restart, "resumes": max(0, len(legs) - 1),
                   "first_step_s": round(first["seconds_since_start"], 3) if first else None,
                   "peak_memory_mb": peak_memory_mb(self.device.kind), "model": t.model, "dataset": t.dataset_label,
                   **({"gradient_checkpointing": self.checkpointing} if self.checkpointing else {}),
                   **self.results(), "output_dir": str(output_dir), "report_to": list(t.report_to),
                   **telemetry},
        )
        log(tele.summary_line(telemetry))
        value = final.get(headline)
        ctx.writer.write("done", step=state.global_step, epoch=state.epoch, headline=headline, value=value)
        self.plot(final)
        shutil.rmtree(ctx.paths.checkpoints, ignore_errors=True)  # complete: a requeue will not retrain
        status(ctx.paths, "COMPLETED")
        shown = f"{value:.4f}" if isinstance(value, float) else value
        log(f"done: {headline} {shown}; model saved to {ctx.output_dir}; metrics in {ctx.paths.metrics}")
        return metrics

    # ------------------------------------------------------------------ 6. benchmark (train.eval_tasks)

    def benchmark(self, output_dir: Path) -> None:
        """Score the saved model with lm-evaluation-harness (:mod:`hpcft.worker.after_training.evaluate`) in a fresh
        process, after this one let go of the training's device memory."""
        import gc

        from hpcft.worker.after_training.evaluate import after_training

        self.trainer = None
        gc.collect()
        import torch

        for backend in (getattr(torch, "cuda", None), getattr(torch, "npu", None)):
            if backend is not None and backend.is_available():
                backend.empty_cache()
        after_training(self.ctx, self.cfg, str(self.ctx.assets[0].path), output_dir,
                       getattr(self.cfg, "llm_method", "full"), self.ctx.device)

    # ------------------------------------------------------------------ what a task says about its run

    def headline(self, final: Optional[dict] = None) -> str:
        """The metric the run leads with, given the final eval metrics; without them (during
        training) the one the curves show."""
        raise NotImplementedError

    def train_figures(self, leg: TrainedLeg, steps_this_leg: int, records: list[dict]) -> dict:
        """The task's own entries of metrics.json's ``train`` (its throughput, ...)."""
        return {}

    def results(self) -> dict:
        """Rank 0 in :meth:`conclude`, after every rank's telemetry: write the task's own result
        files; return its own top-level entries of metrics.json (its data, where its files went)."""
        return {}

    def plot(self, final: Optional[dict] = None) -> None:
        """curves.png: training loss and the headline metric against step (rank 0)."""
        from hpcft.worker.results import plot_curves

        try:
            plot_curves(self.ctx.paths.progress, self.ctx.paths.curves, self.headline(final))
        except Exception as exc:  # noqa: BLE001 - a plotting problem must never fail training
            log(f"warning: could not draw curves.png: {exc}")
