"""QLoRA against LoRA on the same tiny model: peak host memory and tokens/s, side by side.

    .venv/bin/python benchmarks/bench_qlora.py            # hidden 1024 x 4 layers, each side twice
    .venv/bin/python benchmarks/bench_qlora.py --quick    # hidden 256 x 2 (~1 min), twice each

Same machine, same run, same random Llama-architecture model (fp32 on disk, shards of 50 MB),
same alpaca rows, same settings (LoRA r=8 on every linear layer, batch 4, max length 128,
gradient checkpointing, fp32 on the CPU, 1 epoch): each side is ``python -m hpcft.worker`` on a
job that differs only in ``method: lora`` / ``method: qlora`` (4-bit NF4, double-quantized,
bitsandbytes' CPU kernels). Runs are interleaved, so a slower spell of a shared machine hits
both; the best tokens/s and the smallest peak of each side are kept.

Reported per side: tokens/s (metrics.json ``train.tokens_per_second``: the real tokens over the
training loop's wall time), the process's peak host RSS (``peak_memory_mb.host_rss_mb``), the
peak while loading and the RSS right after (``telemetry/load-rank0.json``), and the model's own
footprint (transformers' ``get_memory_footprint``). On a CPU the host is the device: bitsandbytes
quantizes each full-precision shard in host memory while it loads, while LoRA's fp32 weights can
stay file-backed pages of the safetensors mapping, so the host peak can be *higher* for QLoRA
even though its model is ~7x smaller; on a GPU the 4-bit weights are what the device holds.
There is no target: the figures are reported (on a CPU, 4-bit matmuls dequantize every weight
at every step, so QLoRA is expected to be slower; what it buys is memory). Writes
benchmarks/results/bench_qlora.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MAX_LEN = 128
SEED = 42


def _die(msg: str) -> None:
    """A crash, not a missed target (exit 1): scripts/bench treats other codes as fatal."""
    print(msg, file=sys.stderr)
    sys.exit(3)


def run_worker(home: Path, data: Path, method: str, env: dict, i: int) -> dict:
    code = f"""
import json
from pathlib import Path
from devtools.runs import make_run, run_worker
job = {{"name": "bench-{method}-{i}", "executor": "local", "train": {{"task": "causal-lm", "model": "bench-llama",
       "dataset": {str(data)!r}, "method": {method!r}, "epochs": 1, "batch_size": 4, "learning_rate": 1e-3,
       "max_seq_length": {MAX_LEN}, "logging_steps": 10, "seed": {SEED}, "sample_prompts": 0,
       "lora": {{"r": 8, "alpha": 16}}}}}}
p = make_run(job)
proc = run_worker(p, timeout=3600, env={{"OMP_NUM_THREADS": {env["OMP_NUM_THREADS"]!r}}})
assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
m = json.loads(p.metrics.read_text())
load = json.loads((p.dir / "telemetry" / "load-rank0.json").read_text())
print("RESULT", json.dumps({{"tokens_per_second": m["train"]["tokens_per_second"],
                            "seconds": m["train"]["runtime_s"], "tokens": m["train"]["real_tokens"],
                            "peak_host_mb": m["peak_memory_mb"]["host_rss_mb"], "load_peak_mb": load["peak_mb"],
                            "after_load_mb": load["rss_mb"],
                            "footprint_mb": (m.get("quantization") or {{}}).get("model_footprint_mb"),
                            "eval_loss": m["eval"]["loss"]}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**env, "HPCFT_HOME": str(home), "HPCFT_CACHE": str(home / "cache"),
                               "HPCFT_CONFIG": str(home / "none.yaml"), "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        _die(f"worker run ({method}) failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.split("RESULT", 1)[1])


def footprint_mb(model_dir: Path) -> float:
    """The unquantized model's own footprint (fp32), for the LoRA side's row."""
    from transformers import AutoModelForCausalLM

    return round(AutoModelForCausalLM.from_pretrained(str(model_dir)).get_memory_footprint() / 2 ** 20, 3)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=None, help="runs of each side, best kept (default 2)")
    args = ap.parse_args()
    args.repeat = args.repeat or 2
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        _die("bitsandbytes is not installed: pip install 'hpcft[qlora]'")
    from devtools.hub.llm_fixtures import make_tiny_llama, write_alpaca
    from hpcft.core.store import Cache
    from hpcft.stage.layout import register_local

    n = 64 if args.quick else 128
    hidden, layers = (256, 2) if args.quick else (1024, 4)
    threads = str(min(2, os.cpu_count() or 1))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_VERBOSITY": "error"}
    with tempfile.TemporaryDirectory() as d:
        home = Path(d)
        model = make_tiny_llama(home / "model", decoys=False, hidden=hidden, layers=layers, shard="50MB")
        register_local(Cache(home / "cache"), "model", "bench/llama", model, aliases=["bench-llama"])
        data = write_alpaca(home / "data.jsonl", n=n)
        runs: dict[str, list[dict]] = {"lora": [], "qlora": []}
        for i in range(args.repeat):  # interleaved
            for method in runs:
                runs[method].append(run_worker(home, data, method, env, i))
        lora_footprint = footprint_mb(model)
    res = {k: {"tokens_per_second": max(r["tokens_per_second"] for r in v),
               "peak_host_mb": min(r["peak_host_mb"] for r in v),
               "load_peak_mb": min(r["load_peak_mb"] for r in v),
               "after_load_mb": min(r["after_load_mb"] for r in v),
               "footprint_mb": v[0]["footprint_mb"] or lora_footprint,
               "eval_loss": v[0]["eval_loss"], "tokens": v[0]["tokens"]} for k, v in runs.items()}
    print(f"QLoRA vs LoRA (r=8, all linear layers), Llama-arch hidden {hidden} x {layers} layers, {n} alpaca rows, "
          f"batch 4 x {MAX_LEN}, fp32 CPU, {threads} threads, best of {args.repeat} interleaved run(s) each")
    print(f"  {'method':<7} {'tokens/s':>9} {'peak host MB':>13} {'load peak MB':>13} {'after load MB':>14} "
          f"{'model MB':>9} {'eval loss':>9}")
    for name, r in res.items():
        print(f"  {name:<7} {r['tokens_per_second']:9.0f} {r['peak_host_mb']:13.0f} {r['load_peak_mb']:13.0f} "
              f"{r['after_load_mb']:14.0f} {r['footprint_mb']:9.1f} {r['eval_loss']:9.3f}")
    q, lo = res["qlora"], res["lora"]
    print(f"qlora/lora: tokens/s {q['tokens_per_second'] / lo['tokens_per_second']:.2f}x, "
          f"peak host memory {q['peak_host_mb'] / lo['peak_host_mb']:.2f}x, "
          f"model footprint {q['footprint_mb'] / lo['footprint_mb']:.2f}x")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_qlora.json").write_text(json.dumps({"quick": args.quick, "hidden": hidden, "layers": layers,
                                                      "results": res, "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
