"""The memory estimate against measured peaks, and placement's cost (issue 18).

1. Accuracy: the estimate for every case of tests/data/memory_measured.py (published measured
   peaks, each source named) against the measurement: the worst ratios, the median absolute
   error, how many are within +-15 % and how many below 0.95 (targets: all within 15 %, none below
   0.95), for the rows that measure what hpcft runs and, beside them, the rest (4-bit bases,
   LitGPT). Then the activation term against traces of the real transformers code
   (devtools/memtrace.py, ~20 s). Pure arithmetic, no cluster.
2. Placement (needs the dev Slurm: devtools/cluster/dev-slurm up): ``partition: auto`` over 3
   partitions x 4 device counts (1, 2, 4, 8) is 12 ``sbatch --test-only`` calls, made side by
   side; the same calls one after another are the baseline, measured in the same run. The dev
   node has 2 GPUs, so the 3 x 4 table is asked with a view of the partitions whose nodes claim
   8 (Slurm answers the 4- and 8-GPU requests with a refusal, which costs the same round trip).
   Then the whole ``hpcft check`` command with placement on the real cluster (target <= 1 s).
3. ``--runs DIR`` (a runs folder, e.g. ``~/hpcft/runs``): the site's own table instead, every
   finished LLM run's measured peaks against the estimate submit made for it (hpcft.runs.memory):
   the figures that tell whether the estimate holds on this cluster's GPUs and software.

    .venv/bin/python benchmarks/bench_memory.py [--quick] [--repeat 5]
    .venv/bin/python benchmarks/bench_memory.py --runs ~/hpcft/runs
    .venv/bin/python benchmarks/bench_memory.py --markdown    # docs/memory.md's tables
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
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "data"))
sys.path.insert(0, str(ROOT))

from memory_measured import IN_SCOPE, MEASURED, outside  # noqa: E402

from hpcft.core.memory.estimate import Plan, estimate  # noqa: E402
from hpcft.core.memory.shape import shape_from_config  # noqa: E402


def _table(rows: list) -> list:
    out = []
    for r in rows:
        e = estimate(shape_from_config(r["config"]), Plan(**r["plan"]))
        est = e.as_measured(r.get("measured_as", "device"))   # like with like: allocated, reserved or device
        out.append((est / r["measured_gib"], est, r["measured_gib"], r["case"], r["source"]))
    return out


def _report(title: str, rows: list) -> tuple[int, int]:
    ratios = [x[0] for x in rows]
    within = sum(0.85 <= x <= 1.15 for x in ratios)
    below = [x for x in rows if x[0] < 0.95]
    print(f"{title}: {len(rows)} measured cases")
    for source, n in Counter(x[4].split(" ")[0] for x in rows).items():
        print(f"  {n:3d} from {source}")
    print(f"  worst underestimate: {min(ratios):.2f}x ({min(rows)[3]})")
    print(f"  worst overestimate:  {max(ratios):.2f}x ({max(rows)[3]})")
    print(f"  median absolute error: {100 * statistics.median(abs(x - 1) for x in ratios):.1f} %")
    print(f"  within +-15 %: {within} of {len(rows)}; below 0.95: {len(below)}"
          + "".join(f"\n    {x[0]:.2f}x {x[1]:.1f} vs {x[2]:.1f} GiB: {x[3]}" for x in below))
    return within, len(below)


def markdown() -> None:
    """docs/memory.md's accuracy tables, from the same arithmetic (``--markdown``)."""
    sources = list(dict.fromkeys(r["source"] for r in MEASURED))
    for title, rows in (("What hpcft runs (the targets)", IN_SCOPE),
                        ("Beside them: 4-bit bases and LitGPT's own loop", [r for r in MEASURED if outside(r)])):
        print(f"#### {title}\n")
        print("| # | case | measured GiB | as | estimate GiB | ratio | source |\n|---|---|---:|---|---:|---:|---|")
        for i, (r, (ratio, est, got, _, src)) in enumerate(zip(rows, _table(rows)), 1):
            print(f"| {i} | {r['case']} | {got:.1f} | {r.get('measured_as', 'device')} | {est:.1f} | "
                  f"{ratio:.2f} | [{sources.index(src) + 1}] |")
        print()
    for i, src in enumerate(sources, 1):
        print(f"[{i}] {src}  ")


def accuracy() -> bool:
    """The targets on the rows that measure what hpcft runs; the rest (memory_measured.outside)
    beside them."""
    inside = _table(IN_SCOPE)
    within, below = _report("accuracy, what hpcft runs (targets: all within 15 %, none below 0.95)", inside)
    print()
    _report("beside them, 4-bit bases and LitGPT's own loop (not hpcft's path)",
            _table([r for r in MEASURED if outside(r)]))
    return within == len(inside) and not below


def traced() -> None:
    """The activation term against traces of the real transformers code (devtools/memtrace.py)."""
    try:
        from devtools.memtrace import LAYERS, table
    except ImportError as exc:
        print(f"traced activations: not measured ({exc})")
        return
    rows = [r for r in table((1024, 4096, 32768)) if "error" not in r]
    ratios = [r["ratio"] for r in rows]
    print(f"traced activations ({len(rows)} steps, {len({r['model_type'] for r in rows})} families, {LAYERS} layers, "
          f"1k, 4k and 32k tokens): estimate/trace {min(ratios):.2f}-{max(ratios):.2f}x, "
          f"median {statistics.median(ratios):.2f}x")


def site_runs(root: Path) -> bool:
    """The site's own accuracy table from its run folders (device: reserved peak / estimate)."""
    from hpcft.runs.memory import memory_vs_estimate, read_estimate

    rows = []
    for run_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        m = memory_vs_estimate(read_estimate(run_dir), metrics)
        if m:
            rows.append((run_dir.name, m))
    print(f"runs in {root} with an estimate and measured peaks: {len(rows)}")
    print(f"  {'run':<40} {'estimate':>9} {'reserved':>9} {'ratio':>6} {'host est':>9} {'host':>7} {'ratio':>6}")
    for name, m in rows:
        cells = [m["estimate_device_gib"], m["peak_device_reserved_gib"], m["device_ratio"],
                 m["estimate_node_gib"], m["peak_node_host_gib"], m["node_ratio"]]
        print(f"  {name[:40]:<40} " + " ".join(f"{'-' if v is None else round(v, 2):>{w}}"
                                                  for v, w in zip(cells, (9, 9, 6, 9, 7, 6))))
    ratios = [m["device_ratio"] for _, m in rows if m["device_ratio"] is not None]
    if ratios:
        print(f"  device: measured/estimated {min(ratios):.2f}-{max(ratios):.2f}x, "
              f"{sum(r > 1 for r in ratios)} of {len(ratios)} above the estimate")
    return bool(rows)


def _slurm_up() -> bool:
    try:
        return subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def placement(repeat: int) -> bool:
    from hpcft.cluster import slurm
    from hpcft.core.config import Settings
    from hpcft.core.job_load import load_job
    from hpcft.preflight import placement as pl
    from hpcft.preflight.live import ClusterView

    parts = ["gpu", "v100", "v100b"]
    view = ClusterView.live()
    missing = [p for p in parts if p not in view.partitions]
    if missing:
        print(f"placement: partitions {missing} missing: run devtools/cluster/dev-slurm up (it adds them)")
        return False
    for node in view.nodes.values():   # the 3 x 4 table: nodes that claim 8 GPUs
        node.gres = {**node.gres, "gpu": 8}
    settings = Settings(partitions={"gpu": parts})
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "hello.py").write_text("print('hello')\n")
        job_file = Path(tmp) / "auto.yaml"
        job_file.write_text(yaml.safe_dump({"name": "bench-place", "script": "hello.py", "resources": {
            "partition": "auto", "gpus_per_node": "auto", "time": "00:10:00"}}))
        loaded = load_job(job_file, settings)
        side, serial, calls = [], [], 0
        for _ in range(repeat):
            t = time.perf_counter()
            _, out = pl.place(loaded, settings, view)
            side.append(time.perf_counter() - t)
            calls = out.calls
            t = time.perf_counter()
            for c in out.candidates:
                slurm.test_only_start(pl._sbatch_options(loaded.job, settings, c, "gpu"))
            serial.append(time.perf_counter() - t)
        s, b = statistics.median(side), statistics.median(serial)
        print(f"placement over {len(parts)} partitions x {len(pl.DEVICE_COUNTS)} device counts: "
              f"{calls} sbatch --test-only calls")
        print(f"  side by side: {s:.3f} s (median of {repeat}); one after another (baseline): {b:.3f} s; "
              f"ratio {s / b:.2f}x")
        cfg = Path(tmp) / "config.yaml"
        cfg.write_text(yaml.safe_dump({"partitions": {"gpu": parts}}))
        env = {**os.environ, "HPCFT_CONFIG": str(cfg), "HPCFT_HOME": str(Path(tmp) / "home")}
        fixed = Path(tmp) / "fixed.yaml"   # the baseline: the same job with its partition and count named
        fixed.write_text(yaml.safe_dump({"name": "bench-place", "script": "hello.py", "resources": {
            "partition": "v100b", "gpus_per_node": 1, "time": "00:10:00"}}))
        times: dict[Path, list[float]] = {job_file: [], fixed: []}
        for _ in range(repeat):   # interleaved, so both see the same load
            for path in times:
                t = time.perf_counter()
                proc = subprocess.run([sys.executable, "-m", "hpcft.cli.main", "check", str(path)],
                                      capture_output=True, text=True, env=env)
                times[path].append(time.perf_counter() - t)
                if proc.returncode != 0:
                    print(proc.stdout, proc.stderr)
                    return False
                if path == job_file:
                    real = sum(1 for line in proc.stdout.splitlines() if line.startswith(("→", "  gpu", "  v100")))
        c, base = statistics.median(times[job_file]), statistics.median(times[fixed])
        print(f"  hpcft check with placement on the dev cluster ({real} candidates, 2 GPUs per node): "
              f"{c:.3f} s; the same job with partition and count named: {base:.3f} s "
              f"(medians of {repeat}; target <= 1 s)")
    return c <= 1.0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="3 repeats")
    ap.add_argument("--runs", type=Path, help="a runs folder: its LLM runs' peaks against their estimates")
    ap.add_argument("--markdown", action="store_true", help="print docs/memory.md's accuracy tables")
    args = ap.parse_args()
    if args.runs:
        return 0 if site_runs(args.runs.expanduser()) else 1
    if args.markdown:
        markdown()
        return 0
    repeat = 3 if args.quick else args.repeat
    ok = accuracy()
    print()
    traced()
    print()
    if _slurm_up():
        ok = placement(repeat) and ok
    else:
        print("placement: no Slurm controller answers (devtools/cluster/dev-slurm up); not measured")
        ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
