"""Submitting a sweep: one ``sbatch --array`` against one submit per point, side by side.

Target (issue 11): a 100-point sweep is one sbatch call and takes <= 2 s in total (the whole
`hpcft submit` command: start-up, validation, pre-flight, 100 run folders, the one sbatch).
The baseline is 100 separate submits of the same jobs, done the cheapest way (the library's
``submit()`` in one process, no interpreter start per job); `--cli N` also times N separate
`hpcft submit` commands and scales them to the sweep's size. Jobs are submitted held
(``--hold``) and cancelled at once, so nothing runs on the cluster.

    .venv/bin/python benchmarks/bench_sweep.py [--points 100] [--cli 5]     # needs Slurm (dev-slurm up)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
HPCFT = [sys.executable, "-c", "import sys; from hpcft.cli.main import main; sys.exit(main())"]


def _job(folder: Path, name: str, **extra) -> dict:
    (folder / "hello.py").write_text("print('hello')\n")
    return {"name": name, "script": "hello.py", "executor": "slurm",
            "resources": {"partition": "cpu", "time": "5", "sbatch": ["--hold"]}, **extra}


def _array_ids(name: str) -> set[str]:
    out = subprocess.run(["squeue", "-h", "-n", name, "-o", "%F"], capture_output=True, text=True).stdout
    return set(out.split())


def _cancel(name: str) -> None:
    subprocess.run(["scancel", "-n", name], capture_output=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=100)
    ap.add_argument("--cli", type=int, default=5, help="separate CLI submits to time (scaled to --points)")
    ap.add_argument("--quick", action="store_true", help="20 points, 2 CLI submits")
    args = ap.parse_args()
    if args.quick:
        args.points, args.cli = 20, 2
    if subprocess.run(["scontrol", "ping"], capture_output=True).returncode != 0:
        print("bench_sweep: no Slurm cluster (devtools/cluster/dev-slurm up); skipped")
        return 0
    n = args.points
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        os.environ.update(HPCFT_HOME=str(folder / "home"), HPCFT_CONFIG=str(folder / "none.yaml"),
                          XDG_CONFIG_HOME=str(folder / "xdg"))
        tag = f"bench-sweep-{os.getpid()}"
        sweep = _job(folder, f"{tag}-array", sweep={"points": [{"args": [f"--point={i}"]} for i in range(n)],
                                                    "max_parallel": 10})
        (folder / "sweep.yaml").write_text(yaml.safe_dump(sweep))
        try:
            start = time.perf_counter()
            proc = subprocess.run(HPCFT + ["submit", str(folder / "sweep.yaml"), "--json"], capture_output=True,
                                  text=True, cwd=ROOT)
            t_sweep = time.perf_counter() - start
            if proc.returncode != 0:
                raise SystemExit(f"sweep submit failed:\n{proc.stderr}")
            sub = json.loads(proc.stdout)
            arrays = _array_ids(sweep["name"])
            folders = len(list(Path(sub["run_dir"]).glob(f"{sub['sweep_id']}-*")))
        finally:
            _cancel(sweep["name"])

        # baseline 1: separate submits through the library, one process (no start-up per job)
        from hpcft.core.config import load_settings
        from hpcft.core.job_load import load_job
        from hpcft.submit.pipeline import submit

        settings = load_settings()
        single = _job(folder, f"{tag}-single")
        (folder / "single.yaml").write_text(yaml.safe_dump(single))
        try:
            start = time.perf_counter()
            for i in range(n):
                submit(load_job(folder / "single.yaml", settings, [("args", [f"--point={i}"])]), settings)
            t_separate = time.perf_counter() - start
            separate_ids = _array_ids(single["name"])
        finally:
            _cancel(single["name"])

        # baseline 2: separate `hpcft submit` commands (what a user's shell loop does)
        t_cli = None
        if args.cli:
            cli = _job(folder, f"{tag}-cli")
            (folder / "cli.yaml").write_text(yaml.safe_dump(cli))
            try:
                start = time.perf_counter()
                for _ in range(args.cli):
                    subprocess.run(HPCFT + ["submit", str(folder / "cli.yaml")], capture_output=True, check=True,
                                   cwd=ROOT)
                t_cli = (time.perf_counter() - start) / args.cli * n
            finally:
                _cancel(cli["name"])

    print(f"{'submitting ' + str(n) + ' points':52} {'wall s':>8} {'sbatch jobs':>12} {'vs sweep':>9}")
    print(f"{'hpcft submit (sweep: one --array job)':52} {t_sweep:8.2f} {len(arrays):>12} {1.0:9.1f}")
    print(f"{'separate submit() calls, one process':52} {t_separate:8.2f} {len(separate_ids):>12} "
          f"{t_separate / t_sweep:9.1f}")
    if t_cli is not None:
        print(f"{f'separate hpcft submit commands (x{n} from {args.cli})':52} {t_cli:8.2f} {n:>12} "
              f"{t_cli / t_sweep:9.1f}")
    ok = len(arrays) == 1 and folders == n and t_sweep <= 2.0
    print(f"target: one array job ({len(arrays)}), {n} run folders ({folders}), <= 2.0 s ({t_sweep:.2f} s): "
          f"{'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
