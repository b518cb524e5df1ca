"""DPO throughput: the worker (``task: dpo``) against a plain TRL ``DPOTrainer`` script, side by side.

    .venv/bin/python benchmarks/bench_dpo.py            # each side twice, interleaved, best kept
    .venv/bin/python benchmarks/bench_dpo.py --quick    # smoke size (~30 s), twice each

Same machine, same run, same random Llama-architecture model (hidden 256 x 4 layers; quick:
128 x 2; the fixtures' byte-level BPE tokenizer and ChatML template), same preference rows (96;
quick 64) in the messages form (answers of a few to ~60 words), same held-out slice evaluated
every epoch, same settings: LoRA r=8 on every linear layer (the reference is the model with the
adapter disabled on both sides), beta 0.1, sigmoid loss, batch 4, 1 epoch, max length 256,
gradient checkpointing on, fp32, a checkpoint per epoch:

* trl     -- the TRL documentation's recipe, run in this process: ``DPOTrainer(model,
             args=DPOConfig(...), train_dataset, eval_dataset, processing_class,
             peft_config=LoraConfig(...))``;
             TRL applies the chat template and tokenizes.
* worker  -- ``python -m hpcft.worker`` on the same job (hpcft renders and tokenizes the rows,
             then hands TRL's DPOTrainer the token ids).

Tokens/s counts the tokens the policy reads (prompt + chosen and prompt + rejected, each side's
own tokenization) over the wall time of ``trainer.train()`` (both include the per-epoch eval and
checkpoint). Both sides tokenize the rows to the same ids (the counts match), so the ratio is the
training loop's alone. Target: worker >= 1.0x trl. Writes benchmarks/results/bench_dpo.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MAX_LEN = 256
TARGET = 1.0
SEED = 42


def _die(msg: str) -> None:
    """A crash, not a missed target (exit 1): scripts/bench treats other codes as fatal."""
    print(msg, file=sys.stderr)
    sys.exit(3)


def make_data(path: Path, n: int) -> Path:
    from devtools.hub.llm_fixtures import THINGS

    r = random.Random(0)
    rows = []
    for _ in range(n):
        w, k = r.choice(THINGS), (r.randint(1, 5) if r.random() < 0.7 else r.randint(20, 60))
        other = r.choice([t for t in THINGS if t != w])
        rows.append({"prompt": [{"role": "user", "content": f"Repeat the word {w} {k} times."}],
                     "chosen": [{"role": "assistant", "content": " ".join([w] * k)}],
                     "rejected": [{"role": "assistant", "content": " ".join([other] * r.randint(1, k + 2))}]})
    path.write_text("".join(json.dumps(x) + "\n" for x in rows))
    return path


def run_trl(model: Path, data: Path, out: Path) -> dict:
    """The plain TRL recipe, in this process (its imports are paid once, before the clock starts)."""
    import time

    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    ds = load_dataset("json", data_files=str(data))["train"]
    n = len(ds)
    parts = ds.train_test_split(test_size=min(max(0.1, 2 / n), 0.5, 500 / n), seed=SEED)  # the worker's held-out slice
    tok = AutoTokenizer.from_pretrained(model)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    args = DPOConfig(output_dir=str(out), per_device_train_batch_size=4, per_device_eval_batch_size=4,
                     num_train_epochs=1, learning_rate=5e-6, beta=0.1, max_length=MAX_LEN, bf16=False, use_cpu=True,
                     report_to="none", eval_strategy="epoch", save_strategy="epoch", logging_steps=10,
                     disable_tqdm=True, seed=SEED)
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(model), args=args, train_dataset=parts["train"],
                         eval_dataset=parts["test"], processing_class=tok,
                         peft_config=LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, lora_dropout=0.05,
                                                target_modules="all-linear"))
    tr = trainer.train_dataset
    tokens = sum(2 * len(p) + len(c) + len(r) for p, c, r in zip(tr["prompt_ids"], tr["chosen_ids"],
                                                                 tr["rejected_ids"]))
    t0 = time.time()
    trainer.train()
    dt = time.time() - t0
    return {"tokens": tokens, "seconds": dt, "tokens_per_second": tokens / dt}


def run_worker(home: Path, data: Path, env: dict) -> dict:
    code = f"""
import json
from devtools.runs import make_run, run_worker
job = {{"name": "bench-dpo", "executor": "local", "train": {{"task": "dpo", "model": "bench-llama",
       "dataset": {str(data)!r}, "epochs": 1, "batch_size": 4, "learning_rate": 5e-6, "max_seq_length": {MAX_LEN},
       "logging_steps": 10, "seed": {SEED}, "lora": {{"r": 8, "alpha": 16, "dropout": 0.05}},
       "preference": {{"beta": 0.1, "max_prompt_length": {MAX_LEN - 1}}}}}}}
p = make_run(job)
proc = run_worker(p, timeout=3600, env={{"OMP_NUM_THREADS": {env["OMP_NUM_THREADS"]!r}}})
assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
m = json.loads(p.metrics.read_text())
tr = m["train"]
print("RESULT", json.dumps({{"tokens": tr["tokens_per_epoch"], "seconds": tr["runtime_s"],
                            "tokens_per_second": tr["tokens_per_second"]}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**env, "HPCFT_HOME": str(home), "HPCFT_CACHE": str(home / "cache"),
                               "HPCFT_CONFIG": str(home / "none.yaml"), "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        _die(f"worker run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.split("RESULT", 1)[1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=None, help="runs of each side, best kept (default 2)")
    args = ap.parse_args()
    args.repeat = args.repeat or 2
    from devtools.hub.llm_fixtures import make_tiny_llama
    from hpcft.core.store import Cache
    from hpcft.stage.layout import register_local

    n = 64 if args.quick else 96
    threads = str(min(2, os.cpu_count() or 1))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_VERBOSITY": "error", "DS_ACCELERATOR": "cpu", "TRL_EXPERIMENTAL_SILENCE": "1"}
    hidden, layers = (128, 2) if args.quick else (256, 4)
    import torch
    with tempfile.TemporaryDirectory() as d:
        home = Path(d)
        model = make_tiny_llama(home / "model", decoys=False, hidden=hidden, layers=layers, shard="50MB")
        register_local(Cache(home / "cache"), "model", "bench/llama", model, aliases=["bench-llama"])
        data = make_data(home / "data.jsonl", n)
        os.environ.update({k: env[k] for k in ("OMP_NUM_THREADS", "TOKENIZERS_PARALLELISM", "HF_HUB_OFFLINE",
                                               "TRANSFORMERS_VERBOSITY", "TRL_EXPERIMENTAL_SILENCE")})
        torch.set_num_threads(int(threads))
        runs: dict[str, list[dict]] = {"trl": [], "worker": []}
        for i in range(args.repeat):  # interleaved, so a slower spell of a shared machine hits both
            runs["trl"].append(run_trl(model, data, home / f"trl-{i}"))
            runs["worker"].append(run_worker(home, data, env))
        res = {k: max(v, key=lambda r: r["tokens_per_second"]) for k, v in runs.items()}
    base = res["trl"]["tokens_per_second"]
    print(f"DPO (LoRA r=8, beta 0.1), Llama-arch hidden {hidden} x {layers} layers, {n} preference rows, "
          f"{threads} CPU threads, best of {args.repeat} interleaved run(s) each")
    for name, r in res.items():
        print(f"  {name:<8} {r['tokens_per_second']:9.0f} tokens/s  ({r['tokens']} tokens, {r['seconds']:.1f} s)  "
              f"{r['tokens_per_second'] / base:.2f}x trl")
    ratio = res["worker"]["tokens_per_second"] / base
    print(f"worker vs plain TRL DPOTrainer script: {ratio:.2f}x (target >= {TARGET}x)")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_dpo.json").write_text(json.dumps({"quick": args.quick, "results": res, "runs": runs,
                                                    "ratio": ratio, "target": TARGET}, indent=2))
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
