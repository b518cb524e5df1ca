"""``train.task: llamafactory``: the phases of a delegated run, in the order every task has them.

    setup     the resolved YAML and dataset_info.json in the run folder (staged paths, output_dir,
              ddp_timeout; resume_from_checkpoint when output_dir has a checkpoint: a requeue)
    train     llamafactory-cli train, once per node; its trainer_log.jsonl becomes progress events;
              on the time-limit signal it is stopped and the job requeued (rank 0 hands over)
    conclude  node 0 writes metrics.json (all_results.json, the log, the legs' telemetry; the task,
              base model and adapter that export/eval/serve read), the ``done`` event and
              curves.png, and marks the run complete
"""

from __future__ import annotations

import resource
import signal
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

from hpcft.worker.console import log
from hpcft.worker.errors import WorkerError
from hpcft.worker.runtime import Context, status
from hpcft.worker.timelimit import SignalState, await_requeue, handoff

from . import launch, logs, resolve


class EngineFailed(WorkerError, RuntimeError):
    """``llamafactory-cli train`` ended with an error (its own traceback is in the job's log)."""


class Delegated:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.spec = ctx.job.train.llamafactory
        self.folder = ctx.paths.dir / "llamafactory"
        self.yaml: Optional[Path] = None
        self.resume: Optional[Path] = None
        self.leg_start = time.time()
        self.first_step_at: Optional[float] = None
        self.steps_seen: list[int] = []

    def run(self) -> dict:
        self.setup()
        self.train()
        return self.conclude()

    # ------------------------------------------------------------------ 1. setup

    def setup(self) -> None:
        ctx = self.ctx
        model = ctx.assets[0].path
        staged = {a.name: a.path for a in ctx.assets[1:] if a.kind in ("dataset", "file") and a.path is not None}
        self.resume = resolve.last_checkpoint(ctx.output_dir)
        args = resolve.resolved_args(self.spec, model=model, output_dir=ctx.output_dir,
                                     data_dir=self.folder / "data", resume=self.resume)
        self.yaml = resolve.write(self.folder, args, resolve.dataset_info(self.spec, staged))
        step = resolve.checkpoint_step(self.resume)
        if self.resume is not None:
            log(f"resuming from {self.resume} (step {step}, restart {ctx.restart})")
            ctx.writer.write("resume", step=step, restart=ctx.restart)
        else:
            ctx.writer.write("start", step=0, restart=ctx.restart)
        log(f"engine: llamafactory; {args.get('stage', 'sft')} {args.get('finetuning_type', 'lora')} of {model}; "
            f"the resolved YAML: {self.yaml}")

    # ------------------------------------------------------------------ 2. train

    def train(self) -> None:
        ctx, r = self.ctx, self.ctx.job.resources
        env = launch.launch_env(ctx.task, r.devices_per_node)
        tail = logs.LogTail(ctx.output_dir / logs.TRAINER_LOG)
        log(f"llamafactory-cli train on node {ctx.task.rank} of {ctx.task.nodes}: {env['NPROC_PER_NODE']} "
            f"rank(s) per node, rendezvous {env['MASTER_ADDR']}:{env['MASTER_PORT']}")
        SignalState.phase = "train"
        child = launch.Child(self.yaml, env)
        code = child.wait(lambda: SignalState.requested, lambda: self._progress(tail))
        SignalState.phase = "finish"
        if SignalState.requested or code == -getattr(signal, "SIGUSR2", -1):
            self._hand_over()
        if code != 0:
            raise EngineFailed(f"llamafactory-cli train exited with status {code} (its traceback is above in the "
                               f"job's log; the YAML it ran: {self.yaml})")

    def _progress(self, tail: logs.LogTail) -> None:
        if not self.ctx.task.is_main:
            return
        for rec in tail.read():
            event = logs.train_event(rec)
            if event is None:
                continue
            if self.first_step_at is None:
                self.first_step_at = time.time()
                self.ctx.writer.write("first_step", step=event["step"],
                                      seconds_since_start=round(self.first_step_at - self.ctx.process_start, 3))
            self.steps_seen.append(event["step"])
            self.ctx.writer.write("train", **event)

    def _hand_over(self) -> None:
        """The time limit: LLaMA-Factory was stopped; the requeued job resumes from the last
        checkpoint in output_dir. Rank 0 hands the signal to submitit (requeue), the others wait."""
        ctx = self.ctx
        SignalState.requested = True
        last = resolve.last_checkpoint(ctx.output_dir)
        # node 0 follows the log; the other nodes know the step from the checkpoint the ranks saved
        step = self.steps_seen[-1] if self.steps_seen else resolve.checkpoint_step(last or self.resume)
        # the ranks saved a checkpoint at the signal's step (child/hpcft_lf_stop.py), unless LLaMA-Factory
        # was killed first: then the requeued leg resumes from an earlier one
        saved = last is not None and last != self.resume and resolve.checkpoint_step(last) == step
        SignalState.saved = saved
        if ctx.task.is_main:
            ctx.writer.write("signal", step=step)
            ctx.writer.write("leg", restart=ctx.restart, **self._leg_figures())
            ctx.writer.write("requeue", step=resolve.checkpoint_step(last), saved=saved, restart=ctx.restart)
        log(f"stopped LLaMA-Factory at step {step}; the requeued job resumes from "
            f"{last or 'the start (no checkpoint yet)'}")
        if ctx.task.is_main:
            handoff()
        else:
            await_requeue()

    def _leg_figures(self) -> dict:
        now = time.time()
        train_s = now - self.first_step_at if self.first_step_at else 0.0
        steps = len(set(self.steps_seen))
        args = self.spec["args"]
        r = self.ctx.job.resources
        per_step = (int(args.get("per_device_train_batch_size") or 8) * int(args.get("gradient_accumulation_steps") or 1)
                    * max(1, r.devices_per_node) * r.nodes)
        return {"setup_s": round((self.first_step_at or now) - self.ctx.process_start, 3),
                "train_s": round(train_s, 3), "eval_s": 0.0, "save_s": 0.0,
                "total_s": round(now - self.ctx.process_start, 3), "samples": steps * per_step, "tokens": 0}

    # ------------------------------------------------------------------ 3. conclude

    def conclude(self) -> dict:
        from hpcft.worker.results import plot_curves, read_progress, write_metrics
        from hpcft.worker.telemetry import _legs, combine, queue_wait

        ctx = self.ctx
        if not ctx.task.is_main:
            log("llamafactory-cli train finished on this node; node 0 writes the metrics")
            return {}
        records = read_progress(ctx.paths.progress)
        leg = {**self._leg_figures(), "queue_wait_s": queue_wait()}
        train = logs.train_metrics(ctx.output_dir, records, runtime_s=leg["train_s"])
        if isinstance(train["trainer"].get("train_runtime"), (int, float)):
            # the Trainer's own clock of this leg, not the polling's (which adds its start-up and exit)
            leg["train_s"] = train["runtime_s"] = round(float(train["trainer"]["train_runtime"]), 3)
        if train.get("tokens_per_second") and leg["train_s"]:
            leg["tokens"] = int(train["tokens_per_second"] * leg["train_s"])
        final = logs.eval_metrics(ctx.output_dir)
        headline = "loss" if "loss" in final else "train_loss"
        if headline == "train_loss" and isinstance(train.get("loss"), (int, float)):
            final["train_loss"] = train["loss"]   # no evaluation configured: the run leads with its training loss
        device = self._device()
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024   # the largest rank, MiB
        r = ctx.job.resources
        world = max(1, r.devices_per_node) * r.nodes
        telemetry = combine(_legs(ctx.paths.progress) + [leg], [{"rank": 0, "host_rss_mb": round(rss, 1)}],
                            device=device, world_size=world, nodes=r.nodes)
        first = next((x for x in records if x.get("event") == "first_step"), None)
        starts = [x for x in records if x.get("event") in ("start", "resume")]
        args = self.spec["args"]
        metrics = write_metrics(
            ctx.paths.metrics, headline=headline, eval_metrics=final, train_metrics=train, history=[],
            device={"kind": device.kind, "name": device.name, "precision": device.precision, "threads": None},
            extra={"completed": True, "restarts": ctx.restart, "resumes": max(0, len(starts) - 1),
                   "first_step_s": first.get("seconds_since_start") if first else None,
                   "peak_memory_mb": {"host_rss_mb": round(rss, 1)}, "model": ctx.job.train.model,
                   "dataset": ctx.job.train.dataset_label, "method": ctx.job.train.llm_method,
                   "engine": "llamafactory",
                   "llamafactory": {"version": _version(), "stage": args.get("stage", "sft"),
                                    "finetuning_type": args.get("finetuning_type", "lora"), "yaml": str(self.yaml)},
                   "output_dir": str(ctx.output_dir), "report_to": list(ctx.job.train.report_to), **telemetry,
                   **logs.model_fields(args, str(ctx.assets[0].path), ctx.output_dir)})
        value = final.get(headline)
        ctx.writer.write("done", step=train.get("global_step"), epoch=train.get("epochs"), headline=headline,
                         value=value)
        try:
            plot_curves(ctx.paths.progress, ctx.paths.curves, headline)
        except Exception as exc:  # noqa: BLE001 - a plotting problem must never fail the run
            log(f"warning: could not draw curves.png: {exc}")
        status(ctx.paths, "COMPLETED")
        log(f"done: {headline} {value}; LLaMA-Factory's output in {ctx.output_dir}; metrics in {ctx.paths.metrics}")
        return metrics

    def _device(self) -> SimpleNamespace:
        """What the ranks trained on: a GPU job whose torch sees no GPU trained on the CPU."""
        kind = self.ctx.device
        if kind == "gpu" and not _gpu_devices():
            kind = "cpu"   # the dev cluster's fake GPUs (or a node without its driver): the ranks ran on the CPU
        args = self.spec["args"]
        precision = "bf16" if args.get("bf16") or args.get("pure_bf16") else "fp16" if args.get("fp16") else "fp32"
        return SimpleNamespace(kind=kind, name=kind, precision=precision)


def _gpu_devices() -> bool:
    """Whether this node has a GPU driver's device files (NVIDIA, or ROCm's /dev/kfd), asked without
    importing torch (2+ s after training, on the run's wall time)."""
    dev = Path("/dev")
    return any(dev.glob("nvidia[0-9]*")) or (dev / "kfd").exists()


def _version() -> Optional[str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llamafactory")
    except PackageNotFoundError:
        return None
