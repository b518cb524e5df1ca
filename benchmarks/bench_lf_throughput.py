"""causal-lm SFT throughput: hpcft's worker against LLaMA-Factory 0.9.5, side by side (issue 28).

    .venv/bin/python benchmarks/bench_lf_throughput.py            # ~12 min on 2 busy CPU cores
    .venv/bin/python benchmarks/bench_lf_throughput.py --quick    # smoke sizes, one run each, ~4 min
    .venv/bin/python benchmarks/bench_lf_throughput.py --ci       # says what it needs and exits 0 without .venv-lf

LLaMA-Factory runs from its own venv (``.venv-lf``, made by ``HPCFT_LF=1 bash scripts/setup``: it
pins its own torch, datasets and trl). Without it this benchmark says so and measures nothing.

Both sides get the same random Llama-architecture model (bench_llm's: hidden 512 x 8 layers, the
fixtures' byte-level BPE tokenizer and ChatML template; hidden 256 x 4 with --quick), the same
alpaca rows (bench_llm's: answers of a few to ~150 tokens, as instruction data has) and the same
settings: LoRA r=8 alpha 16 on every linear layer, batch 8, learning rate 2e-4, 1 epoch,
cutoff_len = max_seq_length = 256, fp32 on the CPU, the same CPU threads, and each side's default
for gradient checkpointing: LLaMA-Factory's is on; hpcft's is auto, which turns it off when the
memory estimate without it fits the device (here: it does), so each layer's forward runs once.
``--checkpointing on`` forces it on for hpcft too, the like-for-like figure of the engines alone. LLaMA-Factory's ``template: chatml`` renders exactly the text of the
model's ChatML chat template that hpcft renders (checked: the multiset of decoded LLaMA-Factory
examples equals the chat template's renderings); the labels differ only in the ``\\n`` after
``<|im_end|>``, which LLaMA-Factory trains and hpcft does not. hpcft holds its evaluation rows in
a ``validation`` file of their own, so both train on the same rows.

Three comparisons, each side a fresh process (``python -m hpcft.worker RUN_DIR`` on a run folder
made as ``hpcft submit`` makes it; ``llamafactory-cli train job.yaml``), interleaved round by
round, the median of ``--repeat`` runs:

* nopack -- hpcft ``packing: false`` against LLaMA-Factory without packing (target >= 1.3x);
* neat   -- hpcft ``packing: true`` against its ``neat_packing: true`` (examples kept apart, like
            hpcft's; target >= 1.3x);
* pack   -- hpcft ``packing: true`` against its plain ``packing: true`` (examples attend to each
            other; target >= 1.0x).

Tokens/s is measured the same way on both sides: every tokenized train example's real tokens
(not pads) over the train runtime (``trainer.train()``; hpcft's includes its end-of-epoch eval of
8 rows and checkpoint, LLaMA-Factory's evaluates and saves nothing). hpcft's token count is its
metrics.json's ``real_tokens``; LLaMA-Factory's is counted from the tokenized dataset it saves
(``tokenized_path``), without the pads it puts into each packed row (to cutoff_len + 1), which its
own ``effective_tokens_per_sec`` would count. Writes benchmarks/results/bench_lf_throughput.json;
exit 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
LF_VENV = ROOT / ".venv-lf"
LF_CLI = LF_VENV / "bin" / "llamafactory-cli"
MAX_LEN = 256
BATCH = 8
LR = 2e-4
# comparison: (hpcft side, LLaMA-Factory side, target)
TARGETS = {"nopack": ("hpcft", "lf", 1.3), "neat": ("hpcft-pack", "lf-neat", 1.3),
           "pack": ("hpcft-pack", "lf-pack", 1.0)}
LF_MODES = {"lf": {}, "lf-neat": {"packing": True, "neat_packing": True}, "lf-pack": {"packing": True}}


def _die(msg: str) -> None:
    """A crash, not a missed target (exit 1): scripts/bench treats other codes as fatal."""
    print(msg, file=sys.stderr)
    sys.exit(3)


def write_data(folder: Path, n: int) -> Path:
    """bench_llm's rows as ``train.jsonl`` (what both sides train on) and 8 more rows as
    ``validation.jsonl`` (hpcft's evaluation split; LLaMA-Factory evaluates nothing)."""
    from bench_llm import make_data

    folder.mkdir(parents=True)
    rows = make_data(folder / "all.jsonl", n + 8).read_text().splitlines(keepends=True)
    (folder / "all.jsonl").unlink()
    (folder / "train.jsonl").write_text("".join(rows[:n]))
    (folder / "validation.jsonl").write_text("".join(rows[n:]))
    (folder / "dataset_info.json").write_text(json.dumps({"bench": {
        "file_name": "train.jsonl", "formatting": "alpaca",
        "columns": {"prompt": "instruction", "query": "input", "response": "output"}}}))
    return folder


# --------------------------------------------------------------------------- the two sides

def run_hpcft(data: Path, packing: bool, threads: str, checkpointing: str) -> dict:
    from devtools.runs import make_run, run_worker

    paths = make_run({"name": "bench-lf", "executor": "local", "train": {
        "task": "causal-lm", "model": "bench-llama", "dataset": str(data), "epochs": 1, "batch_size": BATCH,
        "learning_rate": LR, "max_seq_length": MAX_LEN, "logging_steps": 10, "sample_prompts": 0,
        "packing": packing, "seed": 0, **({"gradient_checkpointing": True} if checkpointing == "on" else {})}})
    proc = run_worker(paths, timeout=3600, env={"OMP_NUM_THREADS": threads})
    if proc.returncode != 0:
        _die(f"hpcft worker failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    metrics = json.loads(paths.metrics.read_text())
    m = metrics["train"]
    return {"real_tokens": m["real_tokens"], "seconds": m["runtime_s"], "steps": m.get("steps"),
            "gradient_checkpointing": (metrics.get("gradient_checkpointing") or {}).get("on")}


def lf_dataset_tokens(path: Path, pad_id: int) -> tuple[int, int, list[list[int]]]:
    """(real tokens, rows, the rows' ids) of the train split LLaMA-Factory tokenized: every id
    but the pads (the pad token never occurs in the rendered text)."""
    import datasets

    ds = datasets.load_from_disk(str(path))["train"]
    ids = ds["input_ids"]
    return sum(sum(1 for x in row if x != pad_id) for row in ids), len(ids), ids


def run_lf(mode: str, model: Path, data: Path, work: Path, threads: str, pad_id: int) -> dict:
    import yaml

    out = work / "out"
    cfg = {"model_name_or_path": str(model), "stage": "sft", "do_train": True, "finetuning_type": "lora",
           "lora_rank": 8, "lora_alpha": 16, "lora_dropout": 0.0, "lora_target": "all",
           "dataset": "bench", "dataset_dir": str(data), "template": "chatml", "cutoff_len": MAX_LEN,
           "tokenized_path": str(work / "tokenized"), "output_dir": str(out), "overwrite_output_dir": True,
           "per_device_train_batch_size": BATCH, "gradient_accumulation_steps": 1, "learning_rate": LR,
           "num_train_epochs": 1.0, "logging_steps": 10, "save_strategy": "no", "report_to": "none",
           "bf16": False, "fp16": False, "disable_tqdm": True, "seed": 0, "dataloader_num_workers": 0,
           **LF_MODES[mode]}
    work.mkdir(parents=True)
    (work / "job.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "HF_HUB_OFFLINE": "1", "DISABLE_VERSION_CHECK": "1",
           "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": ""}
    proc = subprocess.run([str(LF_CLI), "train", str(work / "job.yaml")], env=env, cwd=work, capture_output=True,
                          text=True, timeout=3600)
    if proc.returncode != 0:
        _die(f"llamafactory-cli train ({mode}) failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    seconds = json.loads((out / "train_results.json").read_text())["train_runtime"]
    real, rows, ids = lf_dataset_tokens(work / "tokenized", pad_id)
    return {"real_tokens": real, "seconds": seconds, "rows": rows, "ids": ids}


def same_text(model: Path, data: Path, lf_ids: list[list[int]]) -> bool:
    """Does LLaMA-Factory's chatml render exactly what the model's chat template (hpcft's
    renderer) renders? Compared as multisets of whole examples (its order is its own)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    rows = [json.loads(x) for x in (data / "train.jsonl").read_text().splitlines()]
    ours = Counter(tok.apply_chat_template([{"role": "user", "content": r["instruction"]},
                                            {"role": "assistant", "content": r["output"]}], tokenize=False)
                   for r in rows)
    theirs = Counter(tok.decode(x) for x in lf_ids)
    return ours == theirs


# --------------------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller model and data, one run of each side")
    ap.add_argument("--ci", action="store_true", help="as --quick; without .venv-lf: say so, exit 0")
    ap.add_argument("--repeat", type=int, help="runs of each side, interleaved (default 2; 1 with --quick)")
    ap.add_argument("--rows", type=int, help="train rows (default 1200; 240 with --quick)")
    ap.add_argument("--only", help="comma-separated sides to run (hpcft, hpcft-pack, lf, lf-neat, lf-pack)")
    ap.add_argument("--threads", type=int, help="CPU threads for each side (default: up to 2)")
    ap.add_argument("--checkpointing", choices=("auto", "on"), default="auto",
                    help="hpcft's gradient checkpointing: its default (auto) or on, like LLaMA-Factory's default")
    args = ap.parse_args()
    quick = args.quick or args.ci
    only = args.only.split(",") if args.only else None
    if not LF_CLI.is_file() and (only is None or any(s.startswith("lf") for s in only)):
        print(f"bench_lf_throughput: no LLaMA-Factory venv ({LF_VENV}); the comparison needs "
              "`HPCFT_LF=1 bash scripts/setup`. Nothing measured.")
        return 0
    repeat = args.repeat or (1 if quick else 2)
    rows = args.rows or (240 if quick else 1200)
    threads = str(args.threads or min(2, os.cpu_count() or 1))
    tmp = tempfile.TemporaryDirectory()
    home = Path(tmp.name)
    os.environ.update({"OMP_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
                       "TRANSFORMERS_VERBOSITY": "error", "DS_ACCELERATOR": "cpu", "HPCFT_HOME": str(home),
                       "HPCFT_CACHE": str(home / "cache"), "HPCFT_CONFIG": str(home / "none.yaml")})
    from devtools.hub.llm_fixtures import make_tiny_llama
    from hpcft.core.store import Cache
    from hpcft.stage.layout import register_local

    with contextlib.redirect_stderr(io.StringIO()):
        model = make_tiny_llama(home / "model", decoys=False, hidden=256 if quick else 512,
                                layers=4 if quick else 8, shard="50MB")
    register_local(Cache(home / "cache"), "model", "bench/llama", model, aliases=["bench-llama"])
    data = write_data(home / "data", rows)
    from transformers import AutoTokenizer

    pad_id = AutoTokenizer.from_pretrained(model).pad_token_id
    sides = {"hpcft": lambda k: run_hpcft(data, False, threads, args.checkpointing),
             "hpcft-pack": lambda k: run_hpcft(data, True, threads, args.checkpointing),
             **{m: (lambda k, m=m: run_lf(m, model, data, home / f"{m}-{k}", threads, pad_id)) for m in LF_MODES}}
    if only:
        sides = {k: v for k, v in sides.items() if k in only}
    load0 = os.getloadavg()
    runs: dict[str, list[dict]] = {k: [] for k in sides}
    checked = None
    for k in range(repeat):  # interleaved: each round runs every side once
        for name, fn in sides.items():
            r = fn(k)
            if name == "lf" and checked is None:
                checked = same_text(model, data, r["ids"])
            r.pop("ids", None)
            r["tokens_per_second"] = r["real_tokens"] / r["seconds"]
            runs[name].append(r)
            print(f"  round {k + 1}: {name:<10} {r['tokens_per_second']:8.0f} real tokens/s ({r['real_tokens']} tokens, "
                  f"{r['seconds']:.1f} s; load average {os.getloadavg()[0]:.1f})", flush=True)
    load1 = os.getloadavg()
    med = {name: statistics.median(r["tokens_per_second"] for r in rs) for name, rs in runs.items()}
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model)
    print(f"causal-lm LoRA SFT, hpcft vs LLaMA-Factory 0.9.5: Llama-arch hidden {cfg.hidden_size} x "
          f"{cfg.num_hidden_layers} layers, {rows} alpaca rows, batch {BATCH}, cutoff {MAX_LEN}, fp32, {threads} CPU "
          f"threads, median of {repeat} interleaved runs each; load average {load0[0]:.1f} before, {load1[0]:.1f} after "
          f"({os.cpu_count()} cores{', not idle' if max(load0[0], load1[0]) > 0.5 else ''})")
    ckpt = {r.get("gradient_checkpointing") for name, rs in runs.items() if name.startswith("hpcft") for r in rs}
    if ckpt:
        print(f"  gradient checkpointing: LLaMA-Factory on (its default); hpcft {args.checkpointing} -> "
              + "/".join("on" if c else "off" for c in sorted(ckpt, key=str)))
    if checked is not None:
        print(f"  same rendered text on both sides (LLaMA-Factory chatml vs the chat template): {checked}")
    for name, rs in runs.items():
        print(f"  {name:<10} {med[name]:8.0f} real tokens/s  (runs: "
              + ", ".join(f"{r['tokens_per_second']:.0f}" for r in rs) + f"; {rs[0]['real_tokens']} tokens)")
    ratios, ok = {}, True
    for mode, (ours, theirs, target) in TARGETS.items():
        if ours not in med or theirs not in med:
            continue
        ratio = med[ours] / med[theirs]
        ratios[mode] = round(ratio, 3)
        ok = ok and ratio >= target
        print(f"{mode:<6} {ours} vs {theirs}: {ratio:.2f}x (target >= {target}x){'' if ratio >= target else '  MISSED'}")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_lf_throughput.json").write_text(json.dumps(
        {"runs": runs, "median_tokens_per_second": med, "ratios": ratios, "quick": quick, "rows": rows,
         "same_text": checked, "hpcft_checkpointing": args.checkpointing, "loadavg": [load0, load1], "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        indent=2) + "\n")
    tmp.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
