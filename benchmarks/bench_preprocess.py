"""Preprocessing off the GPU (issue 28), on the dev Slurm: how much of the training job's own
allocation goes to tokenizing, with the data tokenized in it (``train.preprocess: in-job``, the
default) and with a CPU job first (``cpu-job``: the training job waits on it, afterok).

    eval "$(bash devtools/cluster/dev-slurm env)"; export SLURM_CONF
    .venv/bin/python benchmarks/bench_preprocess.py             # 12,000 conversations each
    .venv/bin/python benchmarks/bench_preprocess.py --rows 2000

Two submits through the real CLI of the same job (bench_data_cache's data, tiny Llama, LoRA,
packing, max_seq_length 512, one step, fp32 on the CPU), each with its own data of the same size
(another seed, so each misses the cache). Figures per training job: ``first_step_s`` (metrics.json:
process start to the first optimizer step, the allocation's wait for data included) and its data
phase (``tokenize_s``); for the CPU job: its tokenizing seconds and processes (preprocess.json).
Writes benchmarks/results/bench_preprocess.json; exit 1 when the cpu-job training job did not
hit the cache or was not faster to its first step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def hpcft(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpcft.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, check=True)


def one(home: Path, mode: str, data: Path) -> dict:
    import yaml

    job = home / f"{mode}.yaml"
    job.write_text(yaml.safe_dump({"name": f"bench-{mode}", "executor": "slurm", "resources": {"time": "01:00:00"},
                                   "train": {"task": "causal-lm", "model": "bench-llama", "dataset": str(data),
                                             "max_steps": 1, "batch_size": 4, "max_seq_length": 512,
                                             "packing": True, "sample_prompts": 0, "eval_subset": 8,
                                             "logging_steps": 1, "seed": 1, "preprocess": mode}}))
    t0 = time.monotonic()
    sub = json.loads(hpcft("submit", str(job), "--json", "--wait").stdout)
    wall = time.monotonic() - t0
    run = Path(sub["run_dir"])
    m = json.loads((run / "metrics.json").read_text())
    out = {"mode": mode, "wall_s": round(wall, 1), "first_step_s": m["first_step_s"],
           "train_data_s": m["data"]["tokenize_s"], "cache": m["data"]["cache"], "tokens": m["data"]["tokens"]}
    pre = run / "preprocess.json"
    if pre.is_file():
        rec = json.loads(pre.read_text())
        out.update(preprocess_tokenize_s=rec["tokenize_s"], preprocess_s=rec["seconds"], num_proc=rec["num_proc"])
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=12000)
    ap.add_argument("--cpus", type=int, default=2, help="config preprocess.cpus (the dev node has 2)")
    ap.add_argument("--quick", action="store_true", help="2,000 rows (figures only)")
    args = ap.parse_args()
    if args.quick:
        args.rows = 2000
    from benchmarks.bench_data_cache import make_data
    from devtools.hub.llm_fixtures import make_tiny_llama
    from hpcft.core.store import Cache
    from hpcft.stage.layout import register_local

    tmp = tempfile.TemporaryDirectory()
    home = Path(tmp.name)
    (home / "config.yaml").write_text(json.dumps({"preprocess": {"cpus": args.cpus, "mem": "4G",
                                                                 "time": "01:00:00"}}))
    os.environ.update({"HPCFT_HOME": str(home), "HPCFT_CACHE": str(home / "cache"),
                       "HPCFT_CONFIG": str(home / "config.yaml"), "HPCFT_ALLOW_CPU_TORCH": "1",
                       "TRANSFORMERS_VERBOSITY": "error"})
    model = make_tiny_llama(home / "model", decoys=False, hidden=64, layers=2, shard="50MB")
    register_local(Cache(home / "cache"), "model", "bench/llama", model, aliases=["bench-llama"])
    rows = [one(home, "in-job", make_data(home / "a.jsonl", args.rows, seed=0)),
            one(home, "cpu-job", make_data(home / "b.jsonl", args.rows, seed=1))]
    print(f"{'mode':8} {'cache':6} {'first step s':>12} {'data s (train job)':>18} {'preprocess s':>12} "
          f"{'procs':>5} {'tokens':>9} {'wall s':>7}")
    for r in rows:
        print(f"{r['mode']:8} {r['cache']:6} {r['first_step_s']:12.2f} {r['train_data_s']:18.2f} "
              f"{r.get('preprocess_tokenize_s', 0):12.2f} {r.get('num_proc', '-')!s:>5} {r['tokens']:9d} "
              f"{r['wall_s']:7.1f}")
    saved = rows[0]["first_step_s"] - rows[1]["first_step_s"]
    print(f"the training job's time to its first step: {saved:.2f} s shorter with cpu-job "
          f"({args.rows} conversations)")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_preprocess.json").write_text(json.dumps({"rows": args.rows, "runs": rows,
                                                           "saved_s": round(saved, 2)}, indent=2) + "\n")
    return 0 if rows[1]["cache"] == "hit" and saved > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
