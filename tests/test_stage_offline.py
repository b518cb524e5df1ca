"""What a compute node gets: after ``hpcft stage``, a fresh process with only
``hpcft.core.offline.offline_env`` set and the hub's port closed loads the names users type
with the real transformers / datasets / evaluate / huggingface_hub."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devtools.hub.pytest_fixtures import hub_fixtures  # noqa: F401
from devtools.hub.server import HubServer
from hpcft.core.offline import offline_env, shim_path

pytestmark = pytest.mark.hub
ROOT = Path(__file__).resolve().parent.parent

CLIENT = r'''
import time
t0 = time.time()
from huggingface_hub import snapshot_download
print("SNAPSHOT", snapshot_download("bert-base-uncased"))
from transformers import AutoModelForSequenceClassification, AutoTokenizer
model = AutoModelForSequenceClassification.from_pretrained("bert-base-uncased", num_labels=2)
tok = AutoTokenizer.from_pretrained("bert-base-uncased")
assert tok("the film is good")["input_ids"][0] == tok.cls_token_id
cased = AutoModelForSequenceClassification.from_pretrained("bert-base-cased", num_labels=5)
from datasets import load_dataset
import datasets
mrpc = load_dataset("glue", "mrpc")
assert mrpc["train"].num_rows == 512 and set(mrpc) == {"train", "validation", "test"}
cola = datasets.load_dataset("nyu-mll/glue", "cola", split="validation")
yelp = load_dataset("yelp_review_full")
assert yelp["train"].features["label"].num_classes == 5
import evaluate
metric = evaluate.load("glue", "mrpc")
print("METRIC", metric.compute(predictions=[0, 1, 1, 0], references=[0, 1, 0, 0]))
print("OK", round(time.time() - t0, 1))
'''


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGINGFACE_", "MODELSCOPE_", "TRANSFORMERS_")) and "proxy" not in k.lower()}
    return env


def test_typed_names_load_offline_with_the_hub_stopped(hub_fixtures, tmp_path):  # noqa: F811
    cache = Path(os.environ["HPCFT_CACHE"])
    hub = HubServer()
    for (kind, rid), folder in hub_fixtures.items():
        hub.add_repo(kind, rid, folder)
    with hub:
        env = {**_clean_env(), "HF_ENDPOINT": hub.url, "MODELSCOPE_ENDPOINT": hub.url}
        for args in (["bert-base-uncased", "glue/mrpc", "glue/cola"],
                     ["bert-base-cased", "yelp_review_full", "--source", "modelscope"]):
            proc = subprocess.run([sys.executable, "-m", "hpcft.cli.main", "stage", *args], env=env, cwd=ROOT,
                                  capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0, proc.stderr
        port = hub.port
    # the hub is stopped: its port refuses connections
    job_env = {**_clean_env(), **offline_env(cache), "HF_ENDPOINT": f"http://127.0.0.1:{port}",
               "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    job_env["PYTHONPATH"] = f"{shim_path()}:{ROOT}"  # as the sbatch template prepends it
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", CLIENT], env=job_env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert "OK" in proc.stdout and "'f1'" in proc.stdout
    assert "hpcft: load_dataset('glue', 'mrpc') -> staged copy" in proc.stderr
    assert "hpcft: evaluate.load('glue') -> staged script" in proc.stderr
    # what the libraries wrote at run time (Arrow cache, the metric's copied module) is the user's own
    runtime = Path(os.environ["HPCFT_HOME"]) / "runtime"
    assert stat.S_IMODE(os.stat(runtime).st_mode) == 0o700  # made private by the shim, whatever the umask
    assert list((runtime / "hf" / "modules" / "evaluate_modules" / "metrics").rglob("glue.py"))
    assert any((runtime / "hf" / "datasets").iterdir())
    assert not any((cache / "hf" / d).exists() for d in ("modules", "datasets", "metrics"))
    snap = [line for line in proc.stdout.splitlines() if line.startswith("SNAPSHOT")][0]
    assert "models--google-bert--bert-base-uncased/snapshots/" in snap or "models--bert-base-uncased/snapshots" in snap
    assert time.monotonic() - t0 < 120


def test_shim_chains_an_existing_sitecustomize_and_imports_nothing_heavy(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "sitecustomize.py").write_text("import os\nos.environ['CHAINED'] = '1'\n")
    env = {**_clean_env(), "HPCFT_CACHE": str(tmp_path), "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": f"{shim_path()}:{other}"}
    code = ("import os, sys; print(os.environ.get('CHAINED'), "
            "any(type(f).__name__ == '_PostImport' for f in sys.meta_path), 'datasets' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.split()
    assert out == ["1", "True", "False"]  # chained, hook installed, nothing heavy imported
    # its start-up cost is a benchmark figure (benchmarks/bench_cli.py), not a timed assertion


def test_shim_passes_through_unstaged_names_and_local_paths(tmp_path, monkeypatch):
    import json

    from hpcft.offline_shim import sitecustomize as s  # imported as a module: installs nothing

    monkeypatch.setenv("HPCFT_CACHE", str(tmp_path))
    assert s.staged_dataset("glue", "mrpc") is None
    (tmp_path / "manifests" / "dataset").mkdir(parents=True)
    folder = tmp_path / "hf/hub/datasets--nyu-mll--glue/snapshots/abc"
    folder.mkdir(parents=True)
    # bound to its asset: named by its key, naming the asset's own snapshot folder (hpcft_trust)
    (tmp_path / "manifests" / "dataset" / "nyu-mll--glue@mrpc.json").write_text(json.dumps(
        {"kind": "dataset", "repo_id": "nyu-mll/glue", "config": "mrpc", "aliases": ["glue", "glue/mrpc"],
         "path": str(folder), "revision": "main", "sha": "abc", "files": []}))
    assert s.staged_dataset("glue", "mrpc") == (str(folder), "mrpc")
    # a manifest is believed only when its folder is its asset's own, inside the cache
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (tmp_path / "manifests" / "dataset" / "evil--glue@cola.json").write_text(json.dumps(
        {"kind": "dataset", "repo_id": "evil/glue", "config": "cola", "aliases": ["glue"], "path": str(outside),
         "sha": "abc", "files": []}))
    assert s.staged_dataset("glue", "cola") is None
    assert s.staged_dataset("nyu-mll/glue", "mrpc", revision="abc") == (str(folder), "mrpc")
    assert s.staged_dataset("glue", "cola") is None
    assert s.staged_dataset("glue", "mrpc", revision="v2") is None
    assert s.staged_dataset(str(tmp_path), None) is None  # an existing path is never rewritten
