"""What a run records about its hardware, speed and time, for every built-in task.

Task-neutral: every task's Trainer gets :func:`callback` (``hpcft.worker.trainer.callbacks``),
a task asks the Trainer to count real tokens (:data:`TRAINING_ARGS`), and the common phases
(:class:`hpcft.worker.task.Task`) time the final evaluation and save with :func:`timed` and call
:func:`finish` on every rank after the final save. Rank 0 gets back a dict for ``metrics.json``::

    hardware:   device kind/name/count, nodes, world size, precision
    throughput: samples/s and tokens/s of real (non-padding) tokens, over training time only
    memory:     peak device memory allocated and reserved, peak host RSS (max over ranks)
    ranks:      the same memory figures per rank, with host and device name
    wall:       queue wait (Slurm's SubmitTime to StartTime, asked with scontrol from inside the
                job, where the controller surely still knows it, accounting or not), setup to the
                first step, training, evaluation, saving, total (summed over a requeued run's legs)
    device_hours

Each leg of a requeued run writes a ``leg`` event to progress.jsonl when it hands over, so the
final figures cover every leg. torch is imported only inside functions.
"""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from hpcft.core.atomic import atomic_write_json, read_json
from hpcft.worker.collective import barrier
from hpcft.worker.console import log
from hpcft.worker.taskenv import scontrol_job

# what a task passes to TrainingArguments so the Trainer counts real tokens (gathered over ranks)
TRAINING_ARGS = {"include_num_input_tokens_seen": "non_padding"}


@dataclass
class Leg:
    """This process's share of the run: one leg between two requeues."""

    process_start: float = 0.0
    train_begin: Optional[float] = None
    train_end: Optional[float] = None
    step0: int = 0
    step1: int = 0
    tokens0: int = 0
    tokens1: int = 0
    samples_per_step: int = 0
    eval_s: float = 0.0            # all evaluation in this leg
    save_s: float = 0.0            # all checkpoint and model writes in this leg
    eval_in_train_s: float = 0.0
    save_in_train_s: float = 0.0
    first_step_at: Optional[float] = None

    @property
    def in_train(self) -> bool:
        return self.train_begin is not None and self.train_end is None

    def add(self, kind: str, seconds: float) -> None:
        if kind == "eval":
            self.eval_s += seconds
            if self.in_train:
                self.eval_in_train_s += seconds
        else:
            self.save_s += seconds
            if self.in_train:
                self.save_in_train_s += seconds

    def summary(self, now: float) -> dict:
        """This leg's figures, in the form of a progress ``leg`` event."""
        train_wall = (self.train_end or now) - self.train_begin if self.train_begin else 0.0
        steps = max(0, self.step1 - self.step0)
        return {
            "setup_s": round((self.first_step_at or self.train_begin or now) - self.process_start, 3),
            "train_s": round(max(0.0, train_wall - self.eval_in_train_s - self.save_in_train_s), 3),
            "eval_s": round(self.eval_s, 3), "save_s": round(self.save_s, 3),
            "total_s": round(now - self.process_start, 3),
            "steps": steps, "samples": steps * self.samples_per_step,
            "tokens": max(0, self.tokens1 - self.tokens0),
        }


LEG = Leg(process_start=time.time())


def reset(process_start: float) -> Leg:
    global LEG
    LEG = Leg(process_start=process_start)
    return LEG


@contextlib.contextmanager
def timed(kind: str) -> Iterator[None]:
    """Count the block as evaluation (``"eval"``) or saving (``"save"``) time of this leg."""
    t0 = time.time()
    try:
        yield
    finally:
        LEG.add(kind, time.time() - t0)


def callback(process_start: float):
    """A TrainerCallback that times training and counts steps, samples and tokens."""
    from transformers import TrainerCallback

    leg = reset(process_start)

    class TelemetryCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            leg.train_begin = time.time()
            leg.step0 = leg.step1 = state.global_step
            leg.tokens0 = leg.tokens1 = int(getattr(state, "num_input_tokens_seen", 0) or 0)
            leg.samples_per_step = args.train_batch_size * args.gradient_accumulation_steps * max(1, args.world_size)

        def on_step_end(self, args, state, control, **kw):
            if leg.first_step_at is None:
                leg.first_step_at = time.time()
            leg.step1 = state.global_step
            leg.tokens1 = int(getattr(state, "num_input_tokens_seen", 0) or 0)

        def on_evaluate(self, args, state, control, metrics=None, **kw):
            runtime = (metrics or {}).get("eval_runtime")
            if isinstance(runtime, (int, float)) and leg.in_train:
                leg.add("eval", float(runtime))

        def on_train_end(self, args, state, control, **kw):
            leg.train_end = time.time()
            leg.step1 = state.global_step
            leg.tokens1 = int(getattr(state, "num_input_tokens_seen", 0) or 0)

    return TelemetryCallback()


# --------------------------------------------------------------------------- memory

def peak_memory(kind: str) -> dict:
    """Peak device memory (allocated and reserved by torch's caching allocator, MiB) of this
    process on its device, through torch.cuda or torch_npu's torch.npu; peak host RSS (MiB)."""
    out: dict[str, Any] = {"host_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if kind not in ("cuda", "npu"):
        return out
    try:
        import torch

        mod = torch.cuda if kind == "cuda" else torch.npu  # type: ignore[attr-defined]
        out["device_allocated_mb"] = round(mod.max_memory_allocated() / 2**20, 1)
        out["device_reserved_mb"] = round(mod.max_memory_reserved() / 2**20, 1)
    except (ImportError, RuntimeError, AttributeError) as exc:  # informational: say why it is missing
        out["device_error"] = f"{type(exc).__name__}: {exc}"
    return out


def rank_file(run_dir: Path, rank: int) -> Path:
    return Path(run_dir) / "telemetry" / f"rank{rank}.json"


def write_rank(run_dir: Path, rank: int, local_rank: int, device: Any) -> dict:
    """Every rank: its host, device and peak memory, in ``telemetry/rank<N>.json``."""
    rec = {"rank": rank, "local_rank": local_rank, "host": socket.gethostname(), "pid": os.getpid(),
           "device": device.kind, "device_name": device.name, **peak_memory(device.kind)}
    atomic_write_json(rank_file(run_dir, rank), rec)
    return rec


# --------------------------------------------------------------------------- queue wait

def parse_queue_wait(scontrol_text: str) -> Optional[float]:
    """Seconds between Slurm's SubmitTime and StartTime in ``scontrol show job`` output (a
    requeue resets SubmitTime, so this is the current leg's wait)."""
    import datetime as dt
    import re

    times = dict(re.findall(r"\b(SubmitTime|StartTime)=(\S+)", scontrol_text))
    try:
        submit, start = (dt.datetime.fromisoformat(times[k]) for k in ("SubmitTime", "StartTime"))
    except (KeyError, ValueError):
        return None
    return max(0.0, (start - submit).total_seconds())


def queue_wait(env: Optional[dict] = None) -> Optional[float]:
    """This job's wait in the queue, asked of Slurm from inside the job (the controller still
    knows the job then, with or without accounting); None outside Slurm."""
    job_id = (env or os.environ).get("SLURM_JOB_ID")
    return parse_queue_wait(scontrol_job(job_id)) if job_id else None


# --------------------------------------------------------------------------- the summary

def _legs(progress: Path) -> list[dict]:
    from hpcft.worker.results import read_progress

    return [r for r in read_progress(progress) if r.get("event") == "leg"]


def end_leg(ctx) -> dict:
    """A leg that hands over for a requeue: record its figures (rank 0)."""
    fig = LEG.summary(time.time())
    if ctx.task.is_main:
        fig["queue_wait_s"] = queue_wait()
        ctx.writer.write("leg", restart=ctx.restart, **fig)
    return fig


def _max(values: list) -> Optional[float]:
    values = [v for v in values if isinstance(v, (int, float))]
    return max(values) if values else None


def combine(legs: list[dict], ranks: list[dict], *, device: Any, world_size: int, nodes: int) -> dict:
    """Pure: the metrics.json telemetry from every leg's figures and every rank's record."""
    tot = {k: round(sum(float(g.get(k) or 0) for g in legs), 3)
           for k in ("setup_s", "train_s", "eval_s", "save_s", "total_s", "samples", "tokens")}
    waits = [g["queue_wait_s"] for g in legs if isinstance(g.get("queue_wait_s"), (int, float))]
    train_s = tot["train_s"]
    device_count = world_size
    return {
        "hardware": {"device": device.kind, "device_name": device.name, "device_count": device_count,
                     "nodes": nodes, "world_size": world_size, "precision": device.precision},
        "throughput": {
            "samples": int(tot["samples"]), "tokens": int(tot["tokens"]),
            "samples_per_s": round(tot["samples"] / train_s, 3) if train_s > 0 else None,
            "tokens_per_s": round(tot["tokens"] / train_s, 3) if train_s > 0 and tot["tokens"] else None,
        },
        "memory": {"peak_device_allocated_mb": _max([r.get("device_allocated_mb") for r in ranks]),
                   "peak_device_reserved_mb": _max([r.get("device_reserved_mb") for r in ranks]),
                   "peak_host_rss_mb": _max([r.get("host_rss_mb") for r in ranks])},
        "ranks": sorted(ranks, key=lambda r: r.get("rank", 0)),
        "wall": {"queue_wait_s": round(sum(waits), 3) if waits else None, "setup_s": tot["setup_s"], "train_s": train_s, "eval_s": tot["eval_s"],
                 "save_s": tot["save_s"], "total_s": tot["total_s"], "legs": len(legs)},
        "device_hours": round(tot["total_s"] * device_count / 3600, 6),
    }


def finish(ctx, device: Any) -> Optional[dict]:
    """Every rank, after the final save: write this rank's record; rank 0 waits for all and
    returns the run's telemetry (None on the other ranks)."""
    now = time.time()
    write_rank(ctx.paths.dir, ctx.task.rank, ctx.task.local_rank, device)
    barrier()
    if not ctx.task.is_main:
        return None
    ranks = [r for r in (read_json(rank_file(ctx.paths.dir, i)) for i in range(ctx.task.world_size)) if r]
    if len(ranks) < ctx.task.world_size:
        log(f"warning: telemetry from {len(ranks)} of {ctx.task.world_size} ranks")
    legs = _legs(ctx.paths.progress) + [{**LEG.summary(now), "queue_wait_s": queue_wait()}]
    return combine(legs, ranks, device=device, world_size=ctx.task.world_size, nodes=ctx.spec.nodes)


def summary_line(tel: dict) -> str:
    thr, mem, wall = tel["throughput"], tel["memory"], tel["wall"]
    dev = f", peak device {mem['peak_device_allocated_mb']} MiB" if mem.get("peak_device_allocated_mb") else ""
    tok = f", {thr['tokens_per_s']:.1f} tokens/s" if thr.get("tokens_per_s") else ""
    return (f"{thr.get('samples_per_s')} samples/s{tok}{dev}, peak host {mem['peak_host_rss_mb']} MiB; "
            f"setup {wall['setup_s']:.1f} s, train {wall['train_s']:.1f} s, eval {wall['eval_s']:.1f} s, "
            f"save {wall['save_s']:.1f} s; {tel['device_hours']:.4f} device-hours")
