"""hpcft compare on run folders written directly (no training, no Slurm): old and new
metrics.json shapes, ratios, name lookup, and that it imports neither torch nor matplotlib
unless a PNG is asked for."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from devtools.fakeruns import fake_run


def test_rows_ratios_and_old_runs(hpcft_home, run_hpcft):
    runs = hpcft_home / "runs"
    a = fake_run(runs, "mrpc", partition="npu", samples_per_s=80.0, tokens_per_s=2000.0, device_mb=3000.0)
    b = fake_run(runs, "mrpc", partition="gpu", samples_per_s=200.0, tokens_per_s=5000.0, device_mb=2500.0)
    old = fake_run(runs, "mrpc-old", partition="gpu", samples_per_s=50.0, modern=False, device_mb=1000.0)
    js = json.loads(run_hpcft("compare", a.run_id, b.run_id, str(old.dir), "--json", check=True).stdout)["runs"]
    assert [r["samples_ratio"] for r in js] == [1.0, 2.5, 0.625]
    assert [r["tokens_ratio"] for r in js] == [1.0, 2.5, None]  # old runs counted no tokens
    assert [r["peak_memory_mb"] for r in js] == [3000.0, 2500.0, 1000.0]
    assert js[2]["train_s"] == pytest.approx(100 * 16 / 50 + 3)  # from the old train.runtime_s
    assert js[2]["device_name"] == "NVIDIA A100" and js[2]["precision"] == "bf16" and js[2]["world_size"] == 1
    assert [r["label"] for r in js] == ["mrpc [npu]", "mrpc [gpu]", "mrpc-old [gpu]"]
    again = fake_run(runs, "mrpc", partition="gpu")
    twins = json.loads(run_hpcft("compare", b.run_id, again.run_id, "--json", check=True).stdout)["runs"]
    assert [r["label"] for r in twins] == [f"mrpc [gpu] {b.run_id[-4:]}", f"mrpc [gpu] {again.run_id[-4:]}"]
    table = run_hpcft("compare", a.run_id, b.run_id, str(old.dir), check=True).stdout.splitlines()
    assert "200.0 (2.50x)" in table[2] and "5000.0 (2.50x)" in table[2] and "2500 MiB" in table[2]
    assert "50.0 (0.62x)" in table[3] and "accuracy 0.7000" in table[3]
    latest = json.loads(run_hpcft("compare", "mrpc", "--json", check=True).stdout)["runs"]
    assert latest[0]["run_id"] == again.run_id  # by name: the latest run with it
    none = run_hpcft("compare")
    assert none.returncode == 2 and "use --last N" in none.stderr


def test_compare_imports_no_torch_and_matplotlib_only_for_png(hpcft_home, tmp_path):
    for i in range(3):
        fake_run(hpcft_home / "runs", f"r{i}", seed=i)
    code = ("import sys; from hpcft.cli.main import main; rc = main(sys.argv[1:]); "
            "print(sorted(m for m in ('torch', 'transformers', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, "compare", "--last", "3", "--json"], capture_output=True,
                         text=True, check=True).stdout
    assert out.rstrip().endswith("[]")
    png = tmp_path / "c.png"
    out = subprocess.run([sys.executable, "-c", code, "compare", "--last", "3", "--png", str(png)],
                         capture_output=True, text=True, check=True).stdout
    assert out.rstrip().endswith("['matplotlib']") and png.read_bytes()[:4] == b"\x89PNG"
