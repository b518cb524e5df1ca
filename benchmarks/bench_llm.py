"""causal-lm SFT throughput: the worker against the plain scripts it replaces, side by side.

    .venv/bin/python benchmarks/bench_llm.py            # ~3 min on 2 idle CPU cores
    .venv/bin/python benchmarks/bench_llm.py --quick    # smoke sizes, ~15 s idle, ~30 s busy
    .venv/bin/python benchmarks/bench_llm.py --profile worker   # cProfile of one side, top 25

Same process, same random Llama-architecture model (hidden 512, 8 layers, the fixtures'
byte-level BPE tokenizer; hidden 256 x 4 with --quick), same alpaca-style data whose answers
vary from a few to ~150 tokens (as instruction data does), same CPU threads, LoRA r=8 on every
linear layer, batch 8, 1 epoch, fp32, gradient checkpointing ON everywhere (the worker's default;
the issue compares at the same setting):

* script-dyn   -- the peft tutorial recipe: prompt + answer tokenized, dynamic padding
                  (DataCollatorForLanguageModeling), Trainer defaults.
* trl-pack     -- a plain TRL ``SFTTrainer`` script, prompt/completion data, ``packing=True``
                  (TRL's default strategy: best-fit decreasing, padding-free).
* worker       -- the hpcft worker (``hpcft.worker.main.run`` on a run folder made as
                  ``hpcft submit`` makes it) with the job's defaults.
* worker-pack  -- the worker with ``packing: true``.
* script-pad   -- (with --padded) the script with padding="max_length" (256), for scale.

Every side runs in this one process, one after the other, after a short warm-up (the first
oneDNN/Trainer set-up is not charged to whoever runs first). Tokens/s counts real (non-pad)
tokens only: each side's tokenized examples, times epochs, over the wall time of
``trainer.train()`` (the worker's includes its per-epoch eval, curves and checkpoint).

Targets (issue 17): worker >= 1.0x script-dyn; worker-pack >= 1.3x script-dyn and >= 1.0x
trl-pack. Full mode also measures the peak host RSS per rank while loading a model for ZeRO-3
on 2 CPU ranks, with and without ``zero.Init`` (see :func:`zero3_rss`).

Also: bytes `hpcft stage` fetches for a sharded Llama-style repo served by the loopback hub
with the decoys a real one carries (``original/consolidated.00.pth``, ``pytorch_model-*.bin`` +
index, GGUF, an orphan ``consolidated.safetensors``), against the repo's total.
Writes benchmarks/results/bench_llm.json.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MAX_LEN = 256
BATCH = 8
TARGETS = {"worker": ("script-dyn", 1.0), "worker-pack": ("script-dyn", 1.3), "worker-pack ": ("trl-pack", 1.0)}


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


# --------------------------------------------------------------------------- the plain scripts

def _prompt(row: dict) -> str:
    return f"### Instruction:\n{row['instruction']}\n\n### Response:\n"


def _ckpt(args_cls) -> dict:
    name = "activation_checkpointing" if "activation_checkpointing" in args_cls.__dataclass_fields__ \
        else "gradient_checkpointing"
    return {name: True}


def script_peft(model_dir: Path, data: Path, out: Path, pad: bool, ckpt: bool = True) -> dict:
    """What a user writes after the peft tutorial: tokenize, LoRA, Trainer, dynamic padding."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainingArguments,
    )

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = [json.loads(x) for x in open(data)]
    texts = [_prompt(r) + r["output"] + tok.eos_token for r in rows]
    enc = tok(texts, truncation=True, max_length=MAX_LEN, padding="max_length" if pad else False)
    real = sum(sum(m) for m in enc["attention_mask"])
    ds = Dataset.from_dict(dict(enc))
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                           LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, target_modules="all-linear"))
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=BATCH, num_train_epochs=1,
                             learning_rate=2e-4, report_to="none", use_cpu=True, save_strategy="no",
                             logging_steps=10, disable_tqdm=True, **(_ckpt(TrainingArguments) if ckpt else {}))
    t = Trainer(model=model, args=args, train_dataset=ds, data_collator=DataCollatorForLanguageModeling(tok, mlm=False))
    t0 = time.perf_counter()
    t.train()
    dt = time.perf_counter() - t0
    return {"real_tokens": real, "seconds": dt, "tokens_per_second": real / dt}


def script_trl(model_dir: Path, data: Path, out: Path) -> dict:
    """A plain TRL SFTTrainer script with packing on (prompt/completion rows: the loss is on
    the completions, as in the worker)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = [json.loads(x) for x in open(data)]
    ds = Dataset.from_list([{"prompt": _prompt(r), "completion": r["output"] + tok.eos_token} for r in rows])
    args = SFTConfig(output_dir=str(out), per_device_train_batch_size=BATCH, num_train_epochs=1, learning_rate=2e-4,
                     report_to="none", use_cpu=True, save_strategy="no", logging_steps=10, disable_tqdm=True,
                     max_length=MAX_LEN, packing=True, bf16=False, **_ckpt(SFTConfig))  # fp32 as the rest (TRL's
    # default bf16=True autocasts on a CPU with avx512_bf16: 4x faster matmuls, not the same settings)
    t = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir), args=args, train_dataset=ds,
                   processing_class=tok,
                   peft_config=LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, target_modules="all-linear"))
    real = sum(len(x) for x in t.train_dataset["input_ids"])
    t0 = time.perf_counter()
    t.train()
    dt = time.perf_counter() - t0
    return {"real_tokens": real, "seconds": dt, "tokens_per_second": real / dt}


# --------------------------------------------------------------------------- the worker

def run_worker(data: Path, packing: bool, grouped: bool = True) -> dict:
    """The worker, in this process, on a run folder made exactly as `hpcft submit` makes it.
    ``grouped=False`` (ablation): random batches instead of its length-grouped ones."""
    from devtools.runs import make_run
    from hpcft.worker.engines.native import causal_lm
    from hpcft.worker.main import run

    job = {"name": "bench-llm", "executor": "local", "train": {
        "task": "causal-lm", "model": "bench-llama", "dataset": str(data), "epochs": 1, "batch_size": BATCH,
        "learning_rate": 2e-4, "max_seq_length": MAX_LEN, "logging_steps": 10, "sample_prompts": 0,
        "packing": packing, "eval_subset": 8,
        "gradient_checkpointing": True}}   # like the scripts (its default, auto, would turn it off here)
    p = make_run(job)
    log = io.StringIO()
    sampling = causal_lm._sampling_args
    if not grouped:
        causal_lm._sampling_args = lambda *a, **kw: {}
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            run(p.dir)
        except BaseException as exc:  # noqa: BLE001 - reported with the worker's own log
            _die(f"worker run failed: {exc!r}\n{log.getvalue()[-3000:]}")
        finally:
            causal_lm._sampling_args = sampling
    m = json.loads(p.metrics.read_text())
    return {"real_tokens": m["train"]["real_tokens"], "seconds": m["train"]["runtime_s"],
            "tokens_per_second": m["train"]["tokens_per_second"], "phases_s": m.get("wall")}


def warm_up(model_dir: Path) -> None:
    """A few forward/backward passes, so one-time oneDNN/allocator set-up is nobody's."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    for n in (32, 128, 256):
        x = torch.randint(0, 100, (BATCH, n))
        model(input_ids=x, labels=x).loss.backward()


# --------------------------------------------------------------------------- ZeRO-3 loading

RSS_CODE = r"""
import json, os, sys, torch
import deepspeed
from transformers import AutoModelForCausalLM
from hpcft.worker.engines.native.llm_model import load_model, rss_mb
deepspeed.init_distributed(dist_backend="gloo")
zero_init = sys.argv[2] == "1"
ds = {"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1}
before = rss_mb()
model = load_model(sys.argv[1], dtype=torch.float32, ds_config=ds if zero_init else None)
loaded = rss_mb()
n = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
held = sum(float(getattr(p, "ds_tensor", p).data.sum()) for p in model.parameters())  # every page it holds, touched
print("RESULT", json.dumps({"rank": int(os.environ["RANK"]), "before_mb": before["rss_mb"],
                            "load_peak_mb": loaded["hwm_mb"], "held_mb": rss_mb()["rss_mb"], "params": n}), flush=True)
"""


def zero3_rss(work: Path, env: dict) -> dict:
    """Peak host RSS (VmHWM) of each of 2 gloo ranks while loading a 114M-parameter model saved
    in bf16 as fp32 master weights (a full fine-tune's), with zero.Init (hpcft's way: the
    DeepSpeed config exists before from_pretrained) and without it; and what each rank holds
    once every page of its weights is touched."""
    import torch
    from transformers import AutoModelForCausalLM

    from devtools.hub.llm_fixtures import make_tiny_llama

    model_dir = make_tiny_llama(work / "llama-114m", decoys=False, hidden=1024, layers=12, shard="100MB")
    bf16 = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    for p in model_dir.glob("model*.safetensors*"):
        p.unlink()
    bf16.save_pretrained(model_dir, max_shard_size="100MB")
    del bf16
    out = {}
    for zero_init in (False, True):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        procs = [subprocess.Popen([sys.executable, "-c", RSS_CODE, str(model_dir), "1" if zero_init else "0"],
                                  env={**env, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2",
                                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                                       "PYTHONPATH": str(ROOT)},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
                 for r in (0, 1)]
        ranks = []
        for p in procs:
            so, se = p.communicate(timeout=600)
            if p.returncode != 0 or "RESULT" not in so:
                _die(f"zero3 load failed:\n{se[-3000:]}")
            ranks.append(json.loads(so.split("RESULT", 1)[1]))
        out["zero_init" if zero_init else "plain"] = ranks
    return out


# --------------------------------------------------------------------------- staging

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


# --------------------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--profile", choices=["script-dyn", "trl-pack", "worker", "worker-pack"],
                    help="run only this side under cProfile and print where its time goes")
    ap.add_argument("--ablate", action="store_true",
                    help="also the worker with random (not length-grouped) batches, and the script without "
                         "gradient checkpointing")
    ap.add_argument("--padded", action="store_true", help="also the script with padding=max_length (slow)")
    ap.add_argument("--threads", type=int, help="CPU threads (default: up to 2; 1 on a busy machine is steadier)")
    args = ap.parse_args()
    threads = str(args.threads or min(2, os.cpu_count() or 1))
    tmp = tempfile.TemporaryDirectory()
    home = Path(tmp.name)
    env = {"OMP_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_VERBOSITY": "error", "DS_ACCELERATOR": "cpu", "HPCFT_HOME": str(home),
           "HPCFT_CACHE": str(home / "cache"), "HPCFT_CONFIG": str(home / "none.yaml")}
    os.environ.update(env)  # before torch and hpcft read them
    import torch

    from devtools.hub.llm_fixtures import make_tiny_llama
    from hpcft.core.store import Cache
    from hpcft.stage.layout import register_local

    torch.set_num_threads(int(threads))
    n = 128 if args.quick else 160
    with contextlib.redirect_stderr(io.StringIO()):
        model = make_tiny_llama(home / "model", decoys=False, hidden=256 if args.quick else 512,
                                layers=4 if args.quick else 8, shard="50MB")
    register_local(Cache(home / "cache"), "model", "bench/llama", model, aliases=["bench-llama"])
    data = make_data(home / "data.jsonl", n)
    sides = {"script-dyn": lambda: script_peft(model, data, home / "dyn", pad=False),
             "trl-pack": lambda: script_trl(model, data, home / "trl"),
             "worker": lambda: run_worker(data, packing=False),
             "worker-pack": lambda: run_worker(data, packing=True)}
    if args.ablate:  # what bought what: the worker's batches in random order; the script without checkpointing
        sides["worker-random"] = lambda: run_worker(data, packing=False, grouped=False)
        sides["script-dyn-nogc"] = lambda: script_peft(model, data, home / "nogc", pad=False, ckpt=False)
    if args.padded:
        sides["script-pad"] = lambda: script_peft(model, data, home / "pad", pad=True)
    warm_up(model)
    if args.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        r = sides[args.profile]()
        prof.disable()
        pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
        print(f"{args.profile}: {r['tokens_per_second']:.0f} real tokens/s ({r['seconds']:.2f} s)")
        return 0
    res = {}
    for name, fn in sides.items():
        with contextlib.redirect_stderr(io.StringIO()):
            res[name] = fn()
    staged = staging_bytes(home) if not args.quick else None
    with contextlib.redirect_stderr(io.StringIO()):
        rss = zero3_rss(home, {**os.environ, **env}) if not args.quick else None
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model)
    base = res["script-dyn"]["tokens_per_second"]
    print(f"causal-lm LoRA SFT, Llama-arch hidden {cfg.hidden_size} x {cfg.num_hidden_layers} layers, {n} examples, "
          f"batch {BATCH}, {threads} CPU threads, gradient checkpointing on everywhere")
    for name, r in res.items():
        print(f"  {name:<12} {r['tokens_per_second']:9.0f} real tokens/s  ({r['real_tokens']} tokens, "
              f"{r['seconds']:.2f} s)  {r['tokens_per_second'] / base:.2f}x script-dyn")
    ratios, ok = {}, True
    for key, (against, target) in TARGETS.items():
        side = key.strip()
        ratio = res[side]["tokens_per_second"] / res[against]["tokens_per_second"]
        ratios[f"{side}/{against}"] = round(ratio, 3)
        ok = ok and ratio >= target
        print(f"{side} vs {against}: {ratio:.2f}x (target >= {target}x){'' if ratio >= target else '  MISSED'}")
    if rss:
        for what, ranks in rss.items():
            print(f"ZeRO-3 load of 114M params (bf16 checkpoint -> fp32) on 2 gloo ranks, {what:<9}: "
                  + ", ".join(f"rank {r['rank']} peak +{r['load_peak_mb'] - r['before_mb']:.0f} MiB while loading, "
                              f"holds +{r['held_mb'] - r['before_mb']:.0f} MiB" for r in ranks))
    if staged:
        print(f"staging a sharded Llama-style repo with decoys: fetched {staged['fetched_bytes'] / 1e6:.2f} MB "
              f"({staged['files']} files; the hub served {staged['served_bytes'] / 1e6:.2f} MB) of "
              f"{staged['repo_bytes'] / 1e6:.2f} MB in the repo; skipped {len(staged['skipped'])} files, "
              f"{staged['skipped_bytes'] / 1e6:.2f} MB: {', '.join(sorted(staged['skipped']))}")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_llm.json").write_text(json.dumps({"results": res, "ratios": ratios, "quick": args.quick,
                                                    "zero3_load_rss": rss, "staging": staged}, indent=2))
    tmp.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
