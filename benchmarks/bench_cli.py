"""CLI start-up: wall time of `hpcft --help`, `render` and `submit --dry-run` on this machine.

Targets (issue 16): `hpcft --help` <= 2x a bare `python -c pass`, and `hpcft submit --dry-run`
with the Slurm pre-flight (scontrol, sbatch --test-only) <= 0.3 s. Every row's median is shown
with its ratio to `python -c pass` measured in the same run, round by round, so a busy machine
slows both alike. The Slurm rows need a controller: the current SLURM_CONF, else the dev cluster
(devtools/cluster/dev-slurm env); a dry run queues nothing.

hpcft runs as an installed package does: bytecode written (PYTHONDONTWRITEBYTECODE is dropped)
and one unmeasured warm-up run per command (which also compiles the script templates once).
`--against DIR` times a second checkout (e.g. `git worktree add /tmp/before HEAD~3`) in the
same rounds, for before/after figures taken side by side.

    .venv/bin/python benchmarks/bench_cli.py [--repeat 15] [--against DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HPCFT = [sys.executable, "-c", "import sys; from hpcft.cli.main import main; sys.exit(main())"]
JOB = "tests/fixtures/jobs/script-cpu.yaml"
HELP_RATIO = 2.0   # hpcft --help <= 2x python -c pass
DRY_RUN_S = 0.3    # hpcft submit --dry-run with the Slurm pre-flight
BASE = "python -c pass"


def slurm_conf() -> str | None:
    """A SLURM_CONF whose controller answers: the current one, else the dev cluster's."""
    if shutil.which("scontrol") is None:
        return None
    candidates = [os.environ.get("SLURM_CONF")]
    script = ROOT / "devtools/cluster/dev-slurm"
    if script.exists():
        out = subprocess.run(["bash", str(script), "env"], capture_output=True, text=True).stdout
        candidates += [ln.split("=", 1)[1].strip("'\"") for ln in out.splitlines() if ln.startswith("export SLURM_CONF=")]
    for conf in candidates:
        env = {**os.environ, **({"SLURM_CONF": conf} if conf else {})}
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, env=env)
        if ping.returncode == 0 and "UP" in ping.stdout:
            return conf or ""
    return None


def run_once(cmd: list[str], env: dict, cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, env=env, cwd=cwd)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} (in {cwd}) failed:\n{proc.stderr.decode()}")
    return took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--against", type=Path, help="another checkout, timed in the same rounds")
    args = ap.parse_args()
    roots = [ROOT] + ([args.against.resolve()] if args.against else [])
    conf = slurm_conf()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as home:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env.update(HPCFT_HOME=home, HPCFT_CONFIG=f"{home}/none.yaml", XDG_CONFIG_HOME=home)
        from hpcft.core.offline import shim_path

        rows: list[tuple[str, list[str], dict, float | None, float | None]] = [  # name, cmd, env, ratio, seconds
            (BASE, [sys.executable, "-c", "pass"], env, None, None),
            ("python -c pass + offline shim (every job)", [sys.executable, "-c", "pass"],
             {**env, "PYTHONPATH": shim_path(), "HPCFT_CACHE": home}, None, 0.1),
            ("hpcft --help", HPCFT + ["--help"], env, HELP_RATIO, None),
            ("hpcft render JOB", HPCFT + ["render", JOB], env, None, None),
            ("hpcft submit --dry-run (local)", HPCFT + ["submit", "--dry-run", "--executor", "local", JOB], env,
             None, None),
        ]
        if conf is not None:
            slurm_env = {**env, **({"SLURM_CONF": conf} if conf else {})}
            rows += [
                ("hpcft submit --dry-run (Slurm pre-flight)",
                 HPCFT + ["submit", "--dry-run", "--executor", "slurm", JOB], slurm_env, None, DRY_RUN_S),
                ("hpcft submit --dry-run (auto: ping + pre-flight)", HPCFT + ["submit", "--dry-run", JOB],
                 slurm_env, None, DRY_RUN_S),
            ]

        def where(name: str) -> list[Path]:  # python alone is the same in every checkout
            return roots if name.startswith("hpcft") else [ROOT]

        for name, cmd, row_env, _, _ in rows:  # warm-up: bytecode, compiled templates
            for root in where(name):
                run_once(cmd, row_env, root)
        times: dict[tuple[str, Path], list[float]] = {}
        for _ in range(args.repeat):  # round by round, so load changes hit every row alike
            for name, cmd, row_env, _, _ in rows:
                for root in where(name):
                    times.setdefault((name, root), []).append(run_once(cmd, row_env, root))
    med = {key: statistics.median(v) for key, v in times.items()}
    base = med[(BASE, ROOT)]
    print(f"{os.cpu_count()} CPUs, load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after; "
          f"median of {args.repeat} rounds"
          + ("" if conf is not None else "; no Slurm controller answers: Slurm rows skipped"))
    head = f"{'command':48} {'median s':>9} {'x python':>9} {'target':>9}  ok"
    if args.against:
        head += f"   {'against s':>9} {'x python':>9} {'change':>7}"
    print(head)
    ok_all = True
    for name, _, _, ratio, seconds in rows:
        t = med[(name, ROOT)]
        x = t / base
        ok = (ratio is None or x <= ratio) and (seconds is None or t <= seconds)
        ok_all &= ok
        target = f"<= {ratio:.1f}x" if ratio else f"<= {seconds:.2f}s" if seconds else ""
        line = f"{name:48} {t:9.3f} {x:9.1f} {target:>9}  {'yes' if ok else 'NO ':3}"
        if args.against and (name, roots[1]) in med:
            other = med[(name, roots[1])]
            line += f"  {other:9.3f} {other / base:9.1f} {(t - other) / other:+7.0%}"
        print(line)
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
