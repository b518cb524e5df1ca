"""After training (issue 10): `hpcft compare` over 50 runs and a cold `hpcft predict`.

Targets: compare of 50 runs <= 1 s (it reads files; no torch). predict has no target: its cold
time is reported next to what it cannot avoid, `python -c "import torch, transformers"` and
loading the model, measured in the same run; `hpcft --help` is measured alongside to show it
did not slow down.

    python benchmarks/bench_after.py [--quick]
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
HPCFT = [sys.executable, "-m", "hpcft.cli.main"]


def median_wall(cmd: list[str], repeat: int, env: dict) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, env=env, cwd=ROOT, check=False)
        times.append(time.perf_counter() - start)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr.decode()[-3000:]}")
    return statistics.median(times)


def classifier_run(home: Path) -> str:
    """A finished run whose output/ holds a tiny BERT classifier with label names (as classify saves it)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from devtools.fakeruns import fake_run
    from devtools.hub.fixtures import make_tiny_bert

    base = make_tiny_bert(home / "tiny-bert", extra_formats=False)
    paths = fake_run(home / "runs", "sst2", partition="cpu")
    model = AutoModelForSequenceClassification.from_pretrained(
        str(base), num_labels=2, id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    model.save_pretrained(str(paths.output))
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(str(paths.output))
    m = json.loads(paths.metrics.read_text())
    paths.metrics.write_text(json.dumps({**m, "output_dir": str(paths.output), "text_columns": ["sentence"]}))
    return paths.run_id


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    repeat = 3 if args.quick else 7
    from devtools.fakeruns import fake_run

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        env = {**os.environ, "HPCFT_HOME": tmp, "HPCFT_CONFIG": f"{tmp}/none.yaml", "XDG_CONFIG_HOME": tmp,
               "HPCFT_CACHE": f"{tmp}/cache", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        os.environ.update({k: env[k] for k in ("HPCFT_HOME", "HPCFT_CONFIG", "XDG_CONFIG_HOME")})
        for i in range(50):
            fake_run(home / "runs", f"run{i}", partition=("gpu", "npu")[i % 2], samples_per_s=50 + i, seed=i,
                     steps=500)
        run_id = classifier_run(home)
        base = median_wall([sys.executable, "-c", "pass"], repeat, env)
        rows = [
            ("python -c pass", base, None),
            ("hpcft --help", median_wall(HPCFT + ["--help"], repeat, env), 0.3),
            ("hpcft runs (the same 51 runs)", median_wall(HPCFT + ["runs"], repeat, env), None),
            ("hpcft compare --last 50", median_wall(HPCFT + ["compare", "--last", "50"], repeat, env), 1.0),
            ("hpcft compare --last 50 --json", median_wall(HPCFT + ["compare", "--last", "50", "--json"], repeat, env),
             1.0),
            ("hpcft compare --last 50 --png (matplotlib)",
             median_wall(HPCFT + ["compare", "--last", "50", "--png", f"{tmp}/c.png"], max(1, repeat // 2), env), None),
            ('python -c "import torch, transformers"',
             median_wall([sys.executable, "-c", "import torch, transformers"], repeat, env), None),
            ("hpcft predict RUN 'one sentence' (cold)",
             median_wall(HPCFT + ["predict", run_id, "this film is wonderful ."], repeat, env), None),
        ]
    print(f"{'command':46} {'median s':>9} {'x python':>9} {'target':>8}  ok")
    ok_all = True
    for name, t, target in rows:
        ok = target is None or t <= target
        ok_all &= ok
        print(f"{name:46} {t:9.3f} {t / base:9.1f} {('<= %.1f' % target) if target else '':>8}  {'yes' if ok else 'NO'}")
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
