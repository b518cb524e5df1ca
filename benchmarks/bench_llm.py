"""causal-lm SFT throughput: the worker against a plain peft + Trainer script, side by side.

    .venv/bin/python benchmarks/bench_llm.py            # ~5 min on 2 idle CPU cores
    .venv/bin/python benchmarks/bench_llm.py --quick    # smaller, for a smoke run

Same machine, same run, same random Llama-architecture model (hidden 512, 8 layers, ~19M
parameters, the fixtures' byte-level BPE tokenizer), same alpaca-style data whose answers vary
from a few to ~150 tokens (as instruction data does), same CPU threads, LoRA r=8 on every linear
layer, batch 8, 1 epoch, fp32:

* script-pad   -- the peft tutorial recipe: prompt + answer tokenized with padding="max_length"
                  (256) and DataCollatorForLanguageModeling, Trainer defaults.
* script-dyn   -- the same script with dynamic padding (pad to the longest in the batch).
* worker       -- `python -m hpcft.worker` with the job's defaults (gradient checkpointing on).
* worker-pack  -- the worker with ``packing: true`` (sequences concatenated to 256, no padding).

Tokens/s counts real (non-pad) tokens only: each side's tokenized examples, times epochs, over
the wall time of ``trainer.train()`` (the worker's includes its per-epoch eval and checkpoint).
Target: worker-pack >= 1.3x script-dyn.

Also: bytes `hpcft stage` fetches for a sharded Llama-style repo served by the loopback hub
with the decoys a real one carries (``original/consolidated.00.pth``, ``pytorch_model-*.bin`` +
index, GGUF, an orphan ``consolidated.safetensors``), against the repo's total.
Writes benchmarks/results/bench_llm.json.
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
TARGET = 1.3


def _die(msg: str) -> None:
    """A crash, not a missed target (exit 1): scripts/bench treats other codes as fatal."""
    print(msg, file=sys.stderr)
    sys.exit(3)


def make_data(path: Path, n: int) -> Path:
    from devtools.hub.llm_fixtures import THINGS

    r = random.Random(0)
    rows = []
    for _ in range(n):
        # most answers short, a long tail (as in alpaca): 70 % of 1-5 words, 30 % of 20-60
        w, k = r.choice(THINGS), (r.randint(1, 5) if r.random() < 0.7 else r.randint(20, 60))
        rows.append({"instruction": f"Repeat the word {w} {k} times.", "input": "", "output": " ".join([w] * k)})
    path.write_text("".join(json.dumps(x) + "\n" for x in rows))
    return path


SCRIPT = r"""
import json, sys, time, torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer,
                          TrainingArguments)
model_dir, data, pad, out = sys.argv[1], sys.argv[2], sys.argv[3] == "pad", sys.argv[4]
torch.manual_seed(0)
tok = AutoTokenizer.from_pretrained(model_dir)
rows = [json.loads(x) for x in open(data)]
texts = [f"### Instruction:\n{r['instruction']}\n\n### Response:\n{r['output']}{tok.eos_token}" for r in rows]
enc = tok(texts, truncation=True, max_length=%d, padding="max_length" if pad else False)
real = sum(sum(m) for m in enc["attention_mask"])
ds = Dataset.from_dict(dict(enc))
model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                       LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, target_modules="all-linear"))
args = TrainingArguments(output_dir=out, per_device_train_batch_size=8, num_train_epochs=1, learning_rate=2e-4,
                         report_to="none", use_cpu=True, save_strategy="no", logging_steps=10, disable_tqdm=True)
t = Trainer(model=model, args=args, train_dataset=ds,
            data_collator=DataCollatorForLanguageModeling(tok, mlm=False))
t0 = time.time(); t.train(); dt = time.time() - t0
print("RESULT", json.dumps({"real_tokens": real, "seconds": dt, "tokens_per_second": real / dt}))
""" % MAX_LEN


def run_script(model: Path, data: Path, pad: bool, tmp: Path, env: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(model), str(data), "pad" if pad else "dyn",
                           str(tmp / ("pad" if pad else "dyn"))], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        _die(f"baseline script failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.split("RESULT", 1)[1])


def run_worker(home: Path, data: Path, packing: bool, env: dict) -> dict:
    code = f"""
import json
from devtools.runs import make_run, run_worker
job = {{"name": "bench-llm", "executor": "local", "train": {{"task": "causal-lm", "model": "bench-llama",
       "dataset": {str(data)!r}, "epochs": 1, "batch_size": 8, "learning_rate": 2e-4, "max_seq_length": {MAX_LEN},
       "logging_steps": 10, "sample_prompts": 0, "packing": {packing}, "eval_subset": 8}}}}
p = make_run(job)
proc = run_worker(p, timeout=3600, env={{"OMP_NUM_THREADS": {env["OMP_NUM_THREADS"]!r}}})
assert proc.returncode == 0, proc.stderr[-3000:]
m = json.loads(p.metrics.read_text())
print("RESULT", json.dumps({{"real_tokens": m["train"]["real_tokens"], "seconds": m["train"]["runtime_s"],
                            "tokens_per_second": m["train"]["tokens_per_second"]}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**env, "HPCFT_HOME": str(home), "HPCFT_CACHE": str(home / "cache"),
                               "HPCFT_CONFIG": str(home / "none.yaml"), "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        _die(f"worker run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.split("RESULT", 1)[1])


def staging_bytes(work: Path) -> dict:
    """Stage the decoy-laden tiny Llama repo through the loopback hub; bytes fetched vs the repo."""
    import yaml

    from devtools.hub.llm_fixtures import LLAMA_ID, make_tiny_llama
    from devtools.hub.server import HubServer

    repo = make_tiny_llama(work / "llama-repo")
    total = sum(p.stat().st_size for p in repo.rglob("*") if p.is_file())
    home = work / "stage-home"
    home.mkdir()
    with HubServer() as hub:
        hub.add_repo("model", LLAMA_ID, repo)
        (home / "config.yaml").write_text(yaml.safe_dump({"sources": {"order": ["hf"], "hf_endpoint": hub.url}}))
        env = {**os.environ, "HPCFT_HOME": str(home), "HPCFT_CACHE": str(home / "cache"),
               "HPCFT_CONFIG": str(home / "config.yaml"), "PYTHONPATH": str(ROOT)}
        proc = subprocess.run([sys.executable, "-m", "hpcft.cli.main", "stage", "llama3-8b-instruct", "--json", "-q"],
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            _die(f"staging failed:\n{proc.stderr[-3000:]}")
        served = hub.log.bytes_served(LLAMA_ID)
    a = json.loads(proc.stdout)["assets"][0]
    return {"repo_bytes": total, "fetched_bytes": a["fetched"], "served_bytes": served, "files": a["files"],
            "skipped": [s["path"] for s in a["skipped"]], "skipped_bytes": a["saved_bytes"]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    from devtools.hub.llm_fixtures import make_tiny_llama
    from hpcft.core.store import Cache
    from hpcft.stage.layout import register_local

    n = 64 if args.quick else 160
    threads = str(min(2, os.cpu_count() or 1))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_VERBOSITY": "error", "DS_ACCELERATOR": "cpu"}
    with tempfile.TemporaryDirectory() as d:
        home = Path(d)
        model = make_tiny_llama(home / "model", decoys=False, hidden=256 if args.quick else 512,
                                layers=4 if args.quick else 8, shard="50MB")
        register_local(Cache(home / "cache"), "model", "bench/llama", model, aliases=["bench-llama"])
        data = make_data(home / "data.jsonl", n)
        res = {"script-pad": run_script(model, data, True, home, env),
               "script-dyn": run_script(model, data, False, home, env),
               "worker": run_worker(home, data, False, env),
               "worker-pack": run_worker(home, data, True, env)}
        staged = staging_bytes(home)
        import torch  # noqa: F401 - only for the parameter count below
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(model)
    base = res["script-dyn"]["tokens_per_second"]
    print(f"causal-lm LoRA SFT, Llama-arch hidden {cfg.hidden_size} x {cfg.num_hidden_layers} layers, {n} examples, "
          f"{threads} CPU threads")
    for name, r in res.items():
        print(f"  {name:<12} {r['tokens_per_second']:9.0f} real tokens/s  ({r['real_tokens']} tokens, "
              f"{r['seconds']:.1f} s)  {r['tokens_per_second'] / base:.2f}x script-dyn")
    ratio = res["worker-pack"]["tokens_per_second"] / base
    print(f"worker (packing) vs plain peft+Trainer script (dynamic padding): {ratio:.2f}x (target >= {TARGET}x); "
          f"vs max-length padding: {res['worker-pack']['tokens_per_second'] / res['script-pad']['tokens_per_second']:.2f}x")
    print(f"staging a sharded Llama-style repo with decoys: fetched {staged['fetched_bytes'] / 1e6:.2f} MB "
          f"({staged['files']} files; the hub served {staged['served_bytes'] / 1e6:.2f} MB) of "
          f"{staged['repo_bytes'] / 1e6:.2f} MB in the repo; skipped {len(staged['skipped'])} files, "
          f"{staged['skipped_bytes'] / 1e6:.2f} MB: {', '.join(sorted(staged['skipped']))}")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_llm.json").write_text(json.dumps({"results": res, "ratio": ratio, "target": TARGET,
                                                         "staging": staged}, indent=2))
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
