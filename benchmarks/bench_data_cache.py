"""Tokenize once (issue 28): time to the first optimizer step of a causal-lm run, first with the
data tokenized (the cache built), then a second run of the same job (the cache hit).

    .venv/bin/python benchmarks/bench_data_cache.py            # 60,000 conversations, ~2-3 min on 2 CPU cores
    .venv/bin/python benchmarks/bench_data_cache.py --quick    # 4,000 (figures only: too little to tokenize
                                                               # for the target against ~8 s of start-up)

Each run is a fresh ``python -m hpcft.worker RUN_DIR`` on a run folder made as ``hpcft submit``
makes it (so its first step includes the imports, the model load and the Trainer's set-up, as a
submitted job's does), with the same tiny random Llama-architecture model (the fixtures' byte-level
BPE tokenizer and ChatML template), LoRA, packing, max_seq_length 512, one step, fp32 on the CPU.
The data: multi-turn ``messages`` rows (a system prompt every fifth, three user/assistant turns,
replies of 3 to 30 words), rendered through the chat template and tokenized by the first
run; the second finds them in ``$HPCFT_HOME/runtime/data/KEY``. Figures: ``first_step_s``
(metrics.json: process start to the first optimizer step), ``tokenize_s`` (the data phase), the
train tokens, and first/second (target >= 5x). Writes benchmarks/results/bench_data_cache.json;
exit 1 when the target is missed (with --quick: only when the second run
missed the cache).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TARGET = 5.0
WORDS = ("apple banana cherry river mountain table window garden yellow purple quickly slowly because "
         "although tensor gradient optimizer cluster partition node memory token sequence").split()


def make_data(path: Path, n: int, seed: int = 0) -> Path:
    r = random.Random(seed)

    def text(lo: int, hi: int) -> str:
        return " ".join(r.choice(WORDS) for _ in range(r.randint(lo, hi))) + "."

    with open(path, "w", encoding="utf-8") as fh:
        for k in range(n):
            msgs = [{"role": "system", "content": "You are a helpful assistant."}] if k % 5 == 0 else []
            for _ in range(3):
                msgs += [{"role": "user", "content": text(4, 16)}, {"role": "assistant", "content": text(3, 30)}]
            fh.write(json.dumps({"messages": msgs}) + "\n")
    return path


def one_run(name: str, data: Path) -> dict:
    from devtools.runs import make_run, run_worker

    paths = make_run({"name": name, "executor": "local", "train": {
        "task": "causal-lm", "model": "bench-llama", "dataset": str(data), "max_steps": 1, "batch_size": 4,
        "max_seq_length": 512, "packing": True, "sample_prompts": 0, "eval_subset": 8, "logging_steps": 1,
        "seed": 1}})
    proc = run_worker(paths, timeout=1800, env={"OMP_NUM_THREADS": os.environ["OMP_NUM_THREADS"]})
    if proc.returncode != 0:
        raise SystemExit(f"{name}: the worker failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    m = json.loads(paths.metrics.read_text())
    d = m["data"]
    return {"first_step_s": m["first_step_s"], "tokenize_s": d["tokenize_s"], "cache": d["cache"],
            "cache_key": d.get("cache_key"), "tokens": d["tokens"], "examples": d["train_examples"]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rows", type=int, help="conversations (default 60000; 4000 with --quick)")
    args = ap.parse_args()
    rows = args.rows or (4000 if args.quick else 60000)
    tmp = tempfile.TemporaryDirectory()
    home = Path(tmp.name)
    os.environ.update({"OMP_NUM_THREADS": str(min(2, os.cpu_count() or 1)), "TOKENIZERS_PARALLELISM": "false",
                       "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "HPCFT_HOME": str(home),
                       "HPCFT_CACHE": str(home / "cache"), "HPCFT_CONFIG": str(home / "none.yaml")})
    from devtools.hub.llm_fixtures import make_tiny_llama
    from hpcft.core.store import Cache
    from hpcft.stage.layout import register_local

    with contextlib.redirect_stderr(io.StringIO()):
        model = make_tiny_llama(home / "model", decoys=False, hidden=64, layers=2, shard="50MB")
    register_local(Cache(home / "cache"), "model", "bench/llama", model, aliases=["bench-llama"])
    data = make_data(home / "data.jsonl", rows)
    first, second = one_run("first", data), one_run("second", data)
    ratio = first["first_step_s"] / max(second["first_step_s"], 1e-9)
    print(f"{'run':8} {'cache':6} {'first step s':>12} {'tokenize s':>10} {'examples':>9} {'tokens':>10}")
    for label, r in (("first", first), ("second", second)):
        print(f"{label:8} {r['cache']:6} {r['first_step_s']:12.2f} {r['tokenize_s']:10.2f} {r['examples']:9d} "
              f"{r['tokens']:10d}")
    same = first["cache_key"] == second["cache_key"] and first["tokens"] == second["tokens"]
    print(f"time to the first step, first / second: {ratio:.2f}x (target >= {TARGET:g}x); "
          f"{second['tokens']} train tokens from {rows} conversations; same cache and tokens: {same}")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_data_cache.json").write_text(json.dumps(
        {"rows": rows, "first": first, "second": second, "ratio": round(ratio, 2), "target": TARGET}, indent=2) + "\n")
    if args.quick:  # smoke size: the figures, not the target
        return 0 if same else 1
    return 0 if ratio >= TARGET and same and (first["cache"], second["cache"]) == ("built", "hit") else 1


if __name__ == "__main__":
    sys.exit(main())
