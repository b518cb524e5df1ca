"""Benchmark scores with lm-evaluation-harness, offline: ``hpcft eval`` and ``train.eval_tasks``.

Started by ``hpcft eval`` as a subprocess on the login node's CPU, inside a Slurm job with
``--submit``, or by a training job's rank 0 after training (:func:`after_training`)::

    python -m hpcft.worker.evaluate --model DIR [--adapter DIR] --tasks mmlu,gsm8k --out RUN/eval
                                    [--limit N] [--fewshot K] [--device cpu|gpu|npu] [--batch-size B]

The model is the harness's ``hf`` model (HFLM) on the staged base model, with ``peft=`` the run's
LoRA adapter (no merge). The task names are hpcft's (:mod:`hpcft.core.eval_tasks`): each maps to
the harness group or subtask it runs; the datasets resolve offline through the job's shim
(``datasets.load_dataset("cais/mmlu", "anatomy")`` -> the staged copy).

Writes, each atomically, into ``--out``: ``<task>.json`` per task (its headline score, every
metric of the harness for it, the subtasks', and what was evaluated) and the harness's own
results file, ``harness/results_<time>.json`` (what ``lm_eval --output_path`` writes).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from ..core.atomic import atomic_write_text
from ..core.eval_tasks import EvalTask, resolve_tasks
from .console import log
from .errors import WorkerError

DEVICES = {"gpu": "cuda", "cuda": "cuda", "npu": "npu", "cpu": "cpu"}
# what makes torch/accelerate think a process is one rank of many (the eval after training is one process)
RANK_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
RANK_PREFIXES = ("PMI_", "PMIX_", "OMPI_COMM_WORLD_", "MV2_COMM_WORLD_")


class EvalError(WorkerError, RuntimeError):
    """The harness cannot run what was asked (lm-eval missing, a model that does not load)."""


def _metrics(entry: dict) -> dict:
    """The harness's ``{"acc,none": 0.5, "acc_stderr,none": ...}`` without the alias/name keys."""
    return {k: v for k, v in entry.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def summarize(task: EvalTask, results: dict, *, model: str, adapter: Optional[str], limit, fewshot,
              seconds: float) -> dict:
    """What ``eval/<task>.json`` holds, from the harness's results dict."""
    res = results.get("results") or {}
    entry = res.get(task.harness) or {}
    metrics = _metrics(entry)
    subtasks = {name: _metrics(res[name]) for name in _subtask_names(task) if name in res and name != task.harness}
    score = metrics.get(task.metric)
    if score is None and subtasks:  # a group the harness did not aggregate: the mean over its subjects
        vals = [m[task.metric] for m in subtasks.values() if task.metric in m]
        score = sum(vals) / len(vals) if vals else None
    n = results.get("n-samples") or {}
    return {"task": task.name, "harness_task": task.harness, "benchmark": task.benchmark.name,
            "metric": task.metric.split(",", 1)[0], "metric_key": task.metric, "score": score,
            "metrics": metrics, "subtasks": subtasks,
            "samples": sum(int((n.get(s) or {}).get("effective", 0)) for s in _subtask_names(task)),
            "model": model, "adapter": adapter, "limit": limit, "fewshot": fewshot,
            "seconds": round(seconds, 3), "lm_eval": _harness_version(),
            "finished_at": _dt.datetime.now().astimezone().isoformat(timespec="seconds")}


def _subtask_names(task: EvalTask) -> list[str]:
    b = task.benchmark
    if not b.subtask:
        return [task.harness]
    return [b.subtask.format(c) for c in task.configs]


def _harness_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


def evaluate(model: str, tasks: list[EvalTask], out: Path, *, adapter: Optional[str] = None,
             tokenizer: Optional[str] = None, limit: Optional[int] = None, fewshot: Optional[int] = None,
             device: str = "cpu", batch_size: int = 8) -> dict[str, dict]:
    """Run the harness on ``tasks``; write ``out/<task>.json`` and the harness's results file."""
    try:
        import lm_eval
        from lm_eval.utils import handle_non_serializable
    except ImportError:
        raise EvalError(f"lm-evaluation-harness is not installed in {sys.executable}: pip install "
                        "'hpcft[eval]' (lm-eval) in the job's environment") from None
    margs = {"pretrained": model, "device": DEVICES.get(device, device), "dtype": "auto"}
    if adapter:
        margs["peft"] = adapter
    if tokenizer:
        margs["tokenizer"] = tokenizer
    names = [t.harness for t in tasks]
    log(f"lm-eval {_harness_version()}: {', '.join(names)} on {model}{' + adapter ' + adapter if adapter else ''} "
        f"({margs['device']}{f', limit {limit}' if limit else ''}{f', {fewshot}-shot' if fewshot is not None else ''})")
    t0 = time.time()
    results = lm_eval.simple_evaluate(model="hf", model_args=margs, tasks=names, limit=limit, num_fewshot=fewshot,
                                      batch_size=batch_size, log_samples=False)
    seconds = time.time() - t0
    if results is None:  # a non-zero rank of a distributed harness run
        return {}
    out.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y-%m-%dT%H-%M-%S.%f")
    atomic_write_text(out / "harness" / f"results_{stamp}.json",
                      json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False))
    summaries = {}
    for t in tasks:
        s = summarize(t, results, model=model, adapter=adapter, limit=limit, fewshot=fewshot, seconds=seconds)
        atomic_write_text(out / f"{t.name}.json", json.dumps(s, indent=2, ensure_ascii=False, default=str))
        summaries[t.name] = s
        shown = "-" if s["score"] is None else f"{s['score']:.4f}"
        log(f"eval {t.name}: {s['metric']} {shown} ({s['samples']} samples) -> {out / (t.name + '.json')}")
    log(f"evaluated {len(tasks)} task(s) in {seconds:.1f} s")
    return summaries


# --------------------------------------------------------------------------- after training

def after_training(ctx, cfg, base_model: str, output_dir: Path, method: str, device: str) -> None:
    """``train.eval_tasks``: rank 0 scores the saved model in a fresh process (its own device
    memory, no process group), as the job's last step; a failure fails the job."""
    tasks = [t.name for t in resolve_tasks(cfg.eval_tasks, "train.eval_tasks")]
    argv = [sys.executable, "-u", "-m", "hpcft.worker.evaluate", "--tasks", ",".join(tasks),
            "--out", str(ctx.paths.dir / "eval"), "--device", device]
    if method in ("lora", "qlora"):   # QLoRA's adapter too, on the unquantized base
        argv += ["--model", base_model, "--adapter", str(output_dir), "--tokenizer", str(output_dir)]
    else:
        argv += ["--model", str(output_dir)]
    env = {k: v for k, v in os.environ.items() if k not in RANK_VARS and not k.startswith(RANK_PREFIXES)}
    log(f"train.eval_tasks: {', '.join(tasks)}")
    proc = subprocess.run(argv, env=env, check=False)
    if proc.returncode != 0:
        raise EvalError(f"train.eval_tasks: the evaluation exited {proc.returncode} (the model is saved; "
                        f"run it again with: hpcft eval {ctx.paths.dir} --tasks {','.join(tasks)})")


# --------------------------------------------------------------------------- command line

def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hpcft.worker.evaluate")
    p.add_argument("--model", required=True, help="the (base) model folder")
    p.add_argument("--adapter", help="a LoRA adapter folder (peft)")
    p.add_argument("--tokenizer", help="the tokenizer folder (default: the model's)")
    p.add_argument("--tasks", required=True)
    p.add_argument("--out", required=True, help="the folder for <task>.json and harness/")
    p.add_argument("--limit", type=int)
    p.add_argument("--fewshot", type=int)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args(argv)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    if a.device == "npu":
        from .device import import_npu

        import_npu()
    try:
        evaluate(a.model, resolve_tasks([a.tasks]), Path(a.out), adapter=a.adapter, tokenizer=a.tokenizer,
                 limit=a.limit, fewshot=a.fewshot, device=a.device, batch_size=a.batch_size)
    except WorkerError as exc:
        print(f"hpcft: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
