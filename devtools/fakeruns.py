"""Run folders as a finished hpcft run leaves them, written directly (no training): for the
compare tests and benchmarks, in the metrics.json shape of today (``modern=True``) or of runs
from before the hardware/throughput/wall record; and a sweep's folders (``fake_sweep``)."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from hpcft.core.atomic import atomic_write_json
from hpcft.core.rundir import RunPaths
from hpcft.runs.index import RunRecord, RunStore, new_run_dir, now_iso
from hpcft.runs.sweep_record import Sweep


def fake_run(runs_root: Path, name: str, *, partition: str = "gpu", samples_per_s: float = 100.0,
             tokens_per_s: float = 3000.0, device_mb: float | None = 2048.0, modern: bool = True,
             steps: int = 100, seed: int = 0, job_id: str | None = None) -> RunPaths:
    r = random.Random(seed)
    paths = new_run_dir(Path(runs_root), name)
    t0 = 1_764_400_000.0
    events = [{"time": t0, "event": "start", "step": 0, "max_steps": steps}]
    for s in range(10, steps + 1, 10):
        events.append({"time": t0 + s * 16 / samples_per_s, "event": "train", "step": s, "max_steps": steps,
                       "loss": round(0.7 * (0.97 ** s) + r.random() * 0.01, 5)})
        if s % 50 == 0:
            events.append({"time": t0 + s * 16 / samples_per_s + 1, "event": "eval", "step": s,
                           "metrics": {"loss": 0.5, "accuracy": 0.6 + s / 1000, "runtime": 1.0}})
    paths.progress.write_text("".join(json.dumps(e) + "\n" for e in events))
    train_s = steps * 16 / samples_per_s
    metrics = {"headline": "accuracy", "eval": {"accuracy": 0.6 + steps / 1000, "loss": 0.5},
               "train": {"runtime_s": train_s + 3, "samples_per_second": samples_per_s, "global_step": steps,
                         "loss": 0.4}, "device": "cuda", "device_name": "NVIDIA A100", "precision": "bf16",
               "peak_memory_mb": {"host_rss_mb": 900.0, **({"device_mb": device_mb} if device_mb else {})},
               "completed": True}
    if modern:
        metrics.update({
            "hardware": {"device": "cuda", "device_name": "NVIDIA A100", "device_count": 1, "nodes": 1,
                         "world_size": 1, "precision": "bf16"},
            "throughput": {"samples": steps * 16, "tokens": int(tokens_per_s * train_s),
                           "samples_per_s": samples_per_s, "tokens_per_s": tokens_per_s},
            "memory": {"peak_device_allocated_mb": device_mb, "peak_device_reserved_mb": device_mb and device_mb * 1.2,
                       "peak_host_rss_mb": 900.0},
            "wall": {"queue_wait_s": 12.0, "setup_s": 8.0, "train_s": train_s, "eval_s": 2.0, "save_s": 1.0,
                     "total_s": train_s + 11, "legs": 1},
            "device_hours": round((train_s + 11) / 3600, 6)})
    atomic_write_json(paths.metrics, metrics)
    atomic_write_json(paths.launch, {"kind": "train", "run_dir": str(paths.dir), "workdir": str(paths.dir),
                                     "output_dir": str(paths.output), "base_dir": str(paths.dir), "device": "gpu",
                                     "nodes": 1, "tasks_per_node": 1, "env": {}, "version": 2})
    RunStore(Path(runs_root)).add(RunRecord(run_id=paths.run_id, name=name, run_dir=str(paths.dir), job_file=None,
                                            kind="train", executor="slurm", submitted_at=now_iso(),
                                            job_id=job_id or str(int(time.time() * 1000) % 10**7),
                                            state="COMPLETED",
                                            partition=partition))
    return paths


def fake_sweep(runs_root: Path, name: str, points: list[dict], *, array_job_id: str = "4242",
               state: str = "COMPLETED") -> Sweep:
    """A sweep as ``hpcft submit`` leaves it (sweep.json, one run folder per point, the index lines),
    its runs in ``state``."""
    sweep_paths = new_run_dir(Path(runs_root), name)
    sid = sweep_paths.run_id
    now = now_iso()
    records = []
    for i in range(len(points)):
        task = RunPaths(sweep_paths.dir / f"{sid}-{i}")
        task.dir.mkdir()
        records.append(RunRecord(run_id=task.run_id, name=name, run_dir=str(task.dir), job_file=None, kind="train",
                                 executor="slurm", submitted_at=now, job_id=f"{array_job_id}_{i}",
                                 state=state, partition="cpu", sweep=sid, sweep_index=i))
    sweep = Sweep(sweep_id=sid, name=name, run_dir=str(sweep_paths.dir), size=len(points), points=points,
                  tasks=[r.run_id for r in records], submitted_at=now, array_job_id=array_job_id)
    sweep.save()
    RunStore(Path(runs_root)).add_many(records)
    return sweep
