"""CLI start-up: `hpcft --help` and `hpcft submit --dry-run` wall time on this machine.

Targets (issue 2): --help <= 0.3 s, submit --dry-run <= 0.5 s. Prints the medians and
the ratio to a bare `python -c pass` measured in the same run.

    .venv/bin/python benchmarks/bench_cli.py [--repeat 9]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HPCFT = [sys.executable, "-c", "import sys; from hpcft.cli.main import main; sys.exit(main())"]


def median_wall(cmd: list[str], repeat: int, env: dict) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, env=env, cwd=ROOT)
        times.append(time.perf_counter() - start)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr.decode()}")
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=9)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "HPCFT_HOME": home, "HPCFT_CONFIG": f"{home}/none.yaml", "XDG_CONFIG_HOME": home}
        job = ROOT / "tests/fixtures/jobs/script-cpu.yaml"
        base = median_wall([sys.executable, "-c", "pass"], args.repeat, env)
        from hpcft.core.offline import shim_path

        shim_env = {**env, "PYTHONPATH": shim_path(), "HPCFT_CACHE": home}
        rows = [
            ("python -c pass", base, None),
            ("python -c pass + offline shim (every job)", median_wall([sys.executable, "-c", "pass"], args.repeat,
                                                                     shim_env), 0.1),
            ("hpcft --help", median_wall(HPCFT + ["--help"], args.repeat, env), 0.3),
            ("hpcft render JOB", median_wall(HPCFT + ["render", str(job)], args.repeat, env), None),
            ("hpcft submit --dry-run (local)",
             median_wall(HPCFT + ["submit", "--dry-run", "--executor", "local", str(job)], args.repeat, env), 0.5),
        ]
        have_slurm = subprocess.run(["scontrol", "ping"], capture_output=True, text=True).returncode == 0 \
            if shutil_which("scontrol") else False
        if have_slurm:
            rows.append(("hpcft submit --dry-run (slurm pre-flight)",
                         median_wall(HPCFT + ["submit", "--dry-run", "--executor", "slurm", str(job)],
                                     args.repeat, env), 0.5))
    print(f"{'command':44} {'median s':>9} {'x python':>9} {'target':>8}  ok")
    ok_all = True
    for name, t, target in rows:
        ok = target is None or t <= target
        ok_all &= ok
        print(f"{name:44} {t:9.3f} {t / base:9.1f} {('<= %.1f' % target) if target else '':>8}  "
              f"{'yes' if ok else 'NO'}")
    return 0 if ok_all else 1


def shutil_which(name: str):
    import shutil

    return shutil.which(name)


if __name__ == "__main__":
    sys.exit(main())
