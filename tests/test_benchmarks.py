"""The benchmarks stay runnable between full runs: CI prints only those that train nothing
(``scripts/bench --ci``), so each of the others must at least import and parse its options, and
``scripts/bench`` must run every one of them (a benchmark it forgot is a figure nobody sees)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHES = sorted((ROOT / "benchmarks").glob("bench_*.py"))


def test_scripts_bench_runs_every_benchmark():
    script = (ROOT / "scripts" / "bench").read_text()
    listed = set(re.findall(r"benchmarks/(bench_\w+\.py)", script))
    assert listed == {b.name for b in BENCHES}


@pytest.mark.parametrize("bench", BENCHES, ids=lambda p: p.stem)
def test_each_benchmark_imports_and_parses_its_options(bench):
    proc = subprocess.run([sys.executable, str(bench), "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("usage: "), proc.stdout[:500]
    if bench.stem not in ("bench_cli", "bench_scale", "bench_stage"):   # full size only, or a fixed size
        assert "--quick" in proc.stdout, f"{bench.name} has no --quick (scripts/bench --quick passes it)"
