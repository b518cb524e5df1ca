"""Benchmark scores with lm-evaluation-harness, offline: ``hpcft eval`` and ``train.eval_tasks``.

Started by ``hpcft eval`` as a subprocess on the login node's CPU, inside a Slurm job with
``--submit``, or by a training job's rank 0 after training (:func:`after_training`)::

    python -m hpcft.worker.after_training.evaluate --model DIR [--adapter DIR] --tasks mmlu,gsm8k --out RUN/eval
                                    [--limit N] [--fewshot K] [--device cpu|gpu|npu] [--batch-size B]
                                    [--backend auto|vllm|hf] [--chat-template] [--dtype D]
                                    [--max-model-len N] [--trust-remote-code]

The model is the harness's ``vllm`` model where the job's environment has vLLM, else its ``hf``
model (HFLM), on the staged base model with the run's LoRA adapter unmerged
(:mod:`hpcft.worker.after_training.eval_backends`). The task names are hpcft's (:mod:`hpcft.core.eval_tasks`):
each maps to the harness group or subtask it runs; the datasets resolve offline through the job's
shim (``datasets.load_dataset("cais/mmlu", "anatomy")`` -> the staged copy). By default a prompt
is the task's plain text, as in the harness's own default and the published leaderboards;
``--chat-template`` wraps it (and the few-shot examples, as turns) in the model's chat template.

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

from hpcft.core.atomic import atomic_write_text
from hpcft.core.eval_tasks import LM_EVAL_FLOOR, EvalTask, floor_text, resolve_tasks, version_tuple
from hpcft.worker.after_training.eval_backends import BACKENDS, EvalModel, harness_model, vllm_env, vllm_metadata_alias
from hpcft.worker.console import log
from hpcft.worker.errors import WorkerError

# what makes torch/accelerate think a process is one rank of many (the eval after training is one process)
RANK_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
RANK_PREFIXES = ("PMI_", "PMIX_", "OMPI_COMM_WORLD_", "MV2_COMM_WORLD_")


class EvalError(WorkerError, RuntimeError):
    """The harness cannot run what was asked (lm-eval missing, a model that does not load)."""


def _metrics(entry: dict) -> dict:
    """The harness's ``{"acc,none": 0.5, "acc_stderr,none": ...}`` without the alias/name keys."""
    return {k: v for k, v in entry.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def summarize(task: EvalTask, results: dict, *, model: str, adapter: Optional[str], limit, fewshot,
              seconds: float, backend: str = "hf", chat_template: bool = False) -> dict:
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
            "backend": backend, "chat_template": chat_template, "seconds": round(seconds, 3), "lm_eval": _harness_version(),
            "finished_at": _dt.datetime.now().astimezone().isoformat(timespec="seconds")}


def _subtask_names(task: EvalTask) -> list[str]:
    b = task.benchmark
    if not b.subtask:
        return [task.harness]
    return [b.subtask.format(c) for c in task.configs]


def _harness_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


def require_harness() -> str:
    """lm-eval importable and not older than the floor whose task files match hpcft's table."""
    try:
        have = _harness_version()
    except ImportError:
        raise EvalError(f"lm-evaluation-harness is not installed in {sys.executable}: pip install "
                        "'hpcft[eval]' (lm-eval) in the job's environment") from None
    if version_tuple(have) < LM_EVAL_FLOOR:
        raise EvalError(f"lm-eval {have} in {sys.executable} is older than {floor_text()}, whose task files load "
                        f"the datasets hpcft stages: pip install 'lm-eval>={floor_text()}' there")
    return have


def evaluate(m: EvalModel, tasks: list[EvalTask], out: Path, *, limit: Optional[int] = None,
             fewshot: Optional[int] = None, batch_size: int = 8, chat_template: bool = False) -> dict[str, dict]:
    """Run the harness on ``tasks``; write ``out/<task>.json`` and the harness's results file."""
    require_harness()
    name, margs = harness_model(m, loglikelihood=any(not t.benchmark.generative for t in tasks))
    if name == "vllm":
        os.environ.update(vllm_env(m.device))
        vllm_metadata_alias()
    import lm_eval
    from lm_eval.utils import handle_non_serializable

    names = [t.harness for t in tasks]
    where = margs.get("device") or f"vLLM, {margs['tensor_parallel_size']} device(s)"
    log(f"lm-eval {_harness_version()} ({name}): {', '.join(names)} on {m.model}"
        f"{' + adapter ' + m.adapter if m.adapter else ''} ({where}{f', limit {limit}' if limit else ''}"
        f"{f', {fewshot}-shot' if fewshot is not None else ''}{', chat template' if chat_template else ''})")
    t0 = time.time()
    results = lm_eval.simple_evaluate(model=name, model_args=margs, tasks=names, limit=limit, num_fewshot=fewshot,
                                      batch_size=batch_size, log_samples=False, apply_chat_template=chat_template,
                                      fewshot_as_multiturn=chat_template)
    seconds = time.time() - t0
    if results is None:  # a non-zero rank of a distributed harness run
        return {}
    out.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y-%m-%dT%H-%M-%S.%f")
    atomic_write_text(out / "harness" / f"results_{stamp}.json",
                      json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False))
    summaries = {}
    for t in tasks:
        s = summarize(t, results, model=m.model, adapter=m.adapter, limit=limit, fewshot=fewshot, seconds=seconds,
                      backend=name, chat_template=chat_template)
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
    argv = [sys.executable, "-u", "-m", "hpcft.worker.after_training.evaluate", "--tasks", ",".join(tasks),
            "--out", str(ctx.paths.dir / "eval"), "--device", device]
    if cfg.trust_remote_code:   # the job's own word (never implied); the harness loads the model's code too
        argv.append("--trust-remote-code")
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
    p = argparse.ArgumentParser(prog="python -m hpcft.worker.after_training.evaluate")
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
    p.add_argument("--backend", choices=BACKENDS, default="auto")
    p.add_argument("--chat-template", action="store_true", help="prompts in the model's chat template")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    p.add_argument("--max-model-len", type=int)
    p.add_argument("--gpu-memory-utilization", type=float, help="vllm: the fraction of device memory it takes")
    p.add_argument("--trust-remote-code", action="store_true", help="the run's train.trust_remote_code")
    a = p.parse_args(argv)
    from hpcft.worker.taskenv import apply_device_env

    apply_device_env(a.device)          # an NPU job's own devices and HCCL, before torch_npu/vLLM load
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    try:
        if a.device == "npu":
            from hpcft.worker.device import import_npu

            import_npu()
        m = EvalModel(a.model, a.adapter, a.tokenizer, a.device, a.backend, a.dtype, a.max_model_len,
                      a.trust_remote_code, a.gpu_memory_utilization)
        evaluate(m, resolve_tasks([a.tasks]), Path(a.out), limit=a.limit, fewshot=a.fewshot,
                 batch_size=a.batch_size, chat_template=a.chat_template)
    except WorkerError as exc:
        print(f"hpcft: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
