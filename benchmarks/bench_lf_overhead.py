"""The delegated engine's overhead (issue 27): ``hpcft submit`` of a LLaMA-Factory YAML with
``engine: llamafactory`` against ``llamafactory-cli train`` run by hand on the same node, the same
tiny YAML (a LoRA SFT of a tiny Llama, 2 ranks, 20 steps), side by side in one run. Target: at most
10 s more wall time.

    eval "$(bash devtools/cluster/dev-slurm env)"; export SLURM_CONF
    .venv/bin/python benchmarks/bench_lf_overhead.py [--repeat 2] [--steps 20]

By hand: ``FORCE_TORCHRUN=1 NPROC_PER_NODE=2 llamafactory-cli train lf.yaml`` in .venv-lf, from its
start to its exit. Delegated: from ``hpcft submit`` to the run's status.json saying COMPLETED (the
worker's last write, after metrics.json and curves.png), and to the job leaving Slurm's queue. The
runs alternate (by hand, delegated, ...) after one warm-up by hand, so both read a warm page cache.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
LF_VENV = Path(os.environ.get("HPCFT_LF_VENV", ROOT / ".venv-lf"))
DEAD = "http://127.0.0.1:9"


def lf_yaml(model: str, steps: int, output_dir: str) -> str:
    return (f"model_name_or_path: {model}\nstage: sft\ndo_train: true\nfinetuning_type: lora\nlora_rank: 8\n"
            "lora_target: all\ndataset: mini\ndataset_dir: data\ntemplate: chatml\ncutoff_len: 64\n"
            f"overwrite_cache: true\noutput_dir: {output_dir}\nlogging_steps: 5\nsave_steps: 1000\n"
            f"report_to: none\nper_device_train_batch_size: 2\nlearning_rate: 1.0e-3\nmax_steps: {steps}\nseed: 3\n")


def by_hand(work: Path, model: Path, steps: int, n: int) -> float:
    out = work / f"by-hand-{n}"
    (work / "by_hand.yaml").write_text(lf_yaml(str(model), steps, str(out)))
    env = {**os.environ, "FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(29100 + (os.getpid() + n) % 500), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PATH": f"{LF_VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    t0 = time.perf_counter()
    proc = subprocess.run([str(LF_VENV / "bin" / "llamafactory-cli"), "train", "by_hand.yaml"], cwd=work, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not (out / "all_results.json").is_file():
        raise SystemExit(f"bench_lf_overhead: llamafactory-cli train by hand failed:\n{proc.stderr[-3000:]}")
    return wall


def delegated(work: Path, env: dict, n: int) -> tuple[float, float]:
    import yaml

    job = work / f"job-{n}.yaml"
    job.write_text(yaml.safe_dump({
        "name": f"lf-overhead-{n}", "executor": "slurm", "engine": "llamafactory", "llamafactory": "lf.yaml",
        "resources": {"partition": "gpu", "gpus_per_node": 2, "time": "00:15:00"},
        "env": {"venv": str(LF_VENV), "vars": {"HF_ENDPOINT": DEAD, "HTTPS_PROXY": DEAD}}}, sort_keys=False))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "hpcft.cli.main", "submit", str(job), "--json"], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"bench_lf_overhead: hpcft submit failed:\n{proc.stdout}\n{proc.stderr}")
    sub = json.loads(proc.stdout)
    status = Path(sub["run_dir"]) / "status.json"
    done = None
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            state = json.loads(status.read_text()).get("state")
        except (OSError, ValueError):
            state = None
        if state == "FAILED":
            raise SystemExit(f"bench_lf_overhead: the delegated run failed; see {sub['run_dir']}")
        if state == "COMPLETED" and done is None:
            done = time.perf_counter() - t0
        if done is not None:
            q = subprocess.run(["squeue", "-h", "-j", sub["job_id"]], capture_output=True, text=True, env=env)
            if not q.stdout.strip():
                return done, time.perf_counter() - t0
        time.sleep(0.1)
    raise SystemExit(f"bench_lf_overhead: job {sub['job_id']} did not finish in 600 s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="one run of each side, 8 steps")
    args = ap.parse_args()
    if args.quick:
        args.repeat, args.steps = 1, 8
    if not (LF_VENV / "bin" / "llamafactory-cli").is_file():
        raise SystemExit(f"bench_lf_overhead: no LLaMA-Factory lane at {LF_VENV} (HPCFT_LF=1 scripts/setup)")
    if not os.environ.get("SLURM_CONF"):
        raise SystemExit('bench_lf_overhead: no SLURM_CONF (eval "$(bash devtools/cluster/dev-slurm env)")')
    from devtools.hub.llm_fixtures import LLAMA_ID, make_tiny_llama, write_alpaca
    from hpcft.core.store import Cache
    from hpcft.stage.layout import register_local

    with tempfile.TemporaryDirectory(prefix="bench-lf-overhead-") as tmp:
        work = Path(tmp)
        home = work / "home"
        env = {**os.environ, "HPCFT_HOME": str(home), "HPCFT_CACHE": str(home / "cache"),
               "HPCFT_CONFIG": str(home / "none.yaml"), "XDG_CONFIG_HOME": str(home / "xdg")}
        model = make_tiny_llama(work / "llama", decoys=False)
        register_local(Cache(home / "cache"), "model", LLAMA_ID, model)
        (work / "data").mkdir()
        write_alpaca(work / "data" / "mini.jsonl", n=64)
        (work / "data" / "dataset_info.json").write_text(json.dumps({"mini": {"file_name": "mini.jsonl"}}))
        (work / "lf.yaml").write_text(lf_yaml(LLAMA_ID, args.steps, "saves/ignored"))
        by_hand(work, model, args.steps, -1)   # warm-up: the first start reads every library from disk
        hand, done, gone = [], [], []
        for n in range(args.repeat):
            hand.append(by_hand(work, model, args.steps, n))
            d, g = delegated(work, env, n)
            done.append(d)
            gone.append(g)
            print(f"  run {n + 1}: by hand {hand[-1]:.1f} s, delegated {d:.1f} s to COMPLETED, {g:.1f} s to "
                  "out of the queue", flush=True)
    h, d, g = statistics.median(hand), statistics.median(done), statistics.median(gone)
    verdict = "meets" if d - h <= 10 else "misses"
    print(f"llamafactory-cli train by hand: {h:.1f} s; hpcft submit (engine: llamafactory): {d:.1f} s to COMPLETED "
          f"(+{d - h:.1f} s, x{d / h:.2f}), {g:.1f} s until Slurm lets go (+{g - h:.1f} s); "
          f"{args.steps} steps, 2 ranks, median of {args.repeat}; target <= +10 s: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
