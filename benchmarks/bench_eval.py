"""`hpcft eval` against lm-evaluation-harness run directly, on the same staged data, side by side.

What hpcft adds around the harness (start-up, task and staged-data checks, the run folder, the
worker subprocess, the score files) is its overhead; issue 19 asks for it as a figure. Both runs
score the same tiny random chat model (devtools/hub/llm_fixtures.py) on the same tasks with the
same ``--limit``, batch size and offline environment (the job shim resolves the hub names to the
staged copies; the loopback hub is stopped before either runs). The harness runs as its users run
it: ``python -m lm_eval --model hf --model_args pretrained=DIR --tasks ... --limit N``. Each side
runs ``--repeat`` times, alternating; the best of each is compared.

    .venv/bin/python benchmarks/bench_eval.py [--limit 50] [--repeat 3] [--quick]
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


def _timed(argv: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process and its children): on a shared machine the CPU
    time is the steadier figure, the wall time the one users feel."""
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"bench_eval: {' '.join(argv[:4])} ... exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return seconds, (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tasks", default="mmlu_anatomy,ceval-valid_accountant,gsm8k")
    ap.add_argument("--quick", action="store_true", help="one multiple-choice task, --limit 10, one run each (CI smoke)")
    args = ap.parse_args()
    if args.quick:
        args.repeat, args.tasks, args.limit = 1, "mmlu_anatomy", 10

    import yaml

    from devtools.hub.eval_fixtures import make_eval_fixtures
    from devtools.hub.llm_fixtures import LLAMA_ID, make_tiny_llama
    from devtools.hub.server import HubServer
    from hpcft.core.config import load_settings
    from hpcft.core.store import Cache
    from hpcft.stage.layout import register_local
    from hpcft.use.launch import local_env

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        home = root / "home"
        os.environ.update(HPCFT_HOME=str(home), HPCFT_CACHE=str(home / "cache"), HPCFT_CONFIG=str(root / "cfg.yaml"),
                          XDG_CONFIG_HOME=str(root / "xdg"))
        os.environ.pop("HPCFT_USER_CONFIG", None)
        model = make_tiny_llama(root / "llama", decoys=False)
        register_local(Cache(home / "cache"), "model", LLAMA_ID, model, aliases=["llama3-8b-instruct"])
        fixtures = make_eval_fixtures(root / "bench", {"ceval": ["accountant"], "cmmlu": ["agronomy"],
                                                       "mmlu": ["anatomy"]}, n=args.limit)
        hpcft = [sys.executable, "-m", "hpcft.cli.main"]
        with HubServer() as hub:
            for repo, folder in fixtures.items():
                hub.add_repo("dataset", repo, folder)
            (root / "cfg.yaml").write_text(yaml.safe_dump({"sources": {"order": ["hf"], "hf_endpoint": hub.url}}))
            _timed([*hpcft, "stage", "-q", "--eval", *args.tasks.split(",")], dict(os.environ))
        env = {**local_env(load_settings()), "HF_ENDPOINT": "http://127.0.0.1:9"}
        ours = [*hpcft, "eval", "llama3-8b-instruct", "--tasks", args.tasks, "--limit", str(args.limit),
                "--batch-size", "8"]
        theirs = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={model},dtype=auto",
                  "--tasks", args.tasks, "--limit", str(args.limit), "--batch_size", "8", "--device", "cpu"]
        times: dict[str, list[float]] = {"hpcft": [], "harness": []}
        cpu: dict[str, list[float]] = {"hpcft": [], "harness": []}
        for i in range(args.repeat):
            order = [("hpcft", ours), ("harness", theirs)] if i % 2 == 0 else [("harness", theirs), ("hpcft", ours)]
            for name, argv in order:
                wall, used = _timed(argv, env)
                times[name].append(wall)
                cpu[name].append(used)
        a, b = min(times["hpcft"]), min(times["harness"])
        ca, cb = min(cpu["hpcft"]), min(cpu["harness"])
        print(f"hpcft eval --limit {args.limit} ({args.tasks}, tiny model, CPU): hpcft {a:.2f} s, "
              f"lm_eval directly {b:.2f} s wall (best of {args.repeat}); CPU time {ca:.2f} s vs {cb:.2f} s")
        print(f"  overhead {a - b:+.2f} s wall ({a / b:.2f}x the harness alone), {ca - cb:+.2f} s CPU ({ca / cb:.2f}x); "
              "all runs: " + json.dumps({"wall": {k: [round(x, 2) for x in v] for k, v in times.items()},
                                         "cpu": {k: [round(x, 2) for x in v] for k, v in cpu.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
