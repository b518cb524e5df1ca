"""Issue 4 point 3: a tutorial script runs *unmodified* with no route to any hub.

`hpcft stage bert-base-uncased glue/mrpc` fetches the tiny fixtures from a loopback hub
under the names users type; the hub is then shut down (its port closed) and
tests/tutorial/run_glue.py -- from_pretrained("bert-base-uncased"),
load_dataset("glue", "mrpc"), evaluate.load("glue", "mrpc"), a plain PyTorch loop,
save_pretrained -- runs with the job environment hpcft gives it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from devtools.hub.pytest_fixtures import hub_fixtures  # noqa: F401
from devtools.hub.server import HubServer
from hpcft.core.config import load_settings
from hpcft.core.offline import offline_env

pytestmark = pytest.mark.worker  # also run on the floor lane (.venv-floor)

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "tutorial" / "run_glue.py"
_STRIP = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "MODELSCOPE_")


def stage_from_loopback_hub(hub_fixtures, hpcft_home, run_hpcft, *names: str) -> str:  # noqa: F811
    """Serve the fixtures, `hpcft stage NAMES`, shut the hub down; return its (now dead) URL."""
    with HubServer() as hub:
        for (kind, rid), folder in hub_fixtures.items():
            hub.add_repo(kind, rid, folder)
            if kind != "space":
                hub.add_alias(kind, rid.split("/", 1)[1], rid)
        url = hub.url
        Path(os.environ["HPCFT_CONFIG"]).write_text(yaml.safe_dump(
            {"sources": {"order": ["hf"], "hf_endpoint": url, "retries": 0}}))
        run_hpcft("stage", *names, check=True, timeout=120)
    return url


@pytest.mark.hub
@pytest.mark.slow
def test_tutorial_script_runs_unmodified_offline(hub_fixtures, hpcft_home, run_hpcft, tmp_path):  # noqa: F811
    dead = stage_from_loopback_hub(hub_fixtures, hpcft_home, run_hpcft, "bert-base-uncased", "glue/mrpc")
    env = {k: v for k, v in os.environ.items() if not k.startswith(_STRIP)}
    env.update(offline_env(load_settings().cache))
    env.update(HF_ENDPOINT=dead, HTTPS_PROXY=dead, HTTP_PROXY=dead, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--max-steps", "10", "--output-dir", str(out)],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "eval: {'accuracy'" in proc.stdout
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()


@pytest.mark.slurm
@pytest.mark.hub
@pytest.mark.slow
def test_tutorial_script_job_on_slurm(slurm, hub_fixtures, hpcft_home, run_hpcft, tmp_path):  # noqa: F811
    """The same, as a `script:` job through `hpcft submit --wait` on the dev cluster."""
    dead = stage_from_loopback_hub(hub_fixtures, hpcft_home, run_hpcft, "bert-base-uncased", "glue/mrpc")
    out = tmp_path / "out"
    job = {"name": "tutorial", "executor": "slurm", "script": str(SCRIPT), "workdir": str(tmp_path),
           "args": ["--max-steps", "10", "--output-dir", str(out)],
           "assets": {"models": ["bert-base-uncased"], "datasets": ["glue/mrpc"], "metrics": ["glue"]},
           "resources": {"time": "00:10:00"},
           "env": {"vars": {"HF_ENDPOINT": dead, "HTTPS_PROXY": dead, "HTTP_PROXY": dead}}}
    path = tmp_path / "tutorial.yaml"
    path.write_text(yaml.safe_dump(job))
    proc = run_hpcft("submit", str(path), "--wait", timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "eval: {'accuracy'" in proc.stdout
    assert (out / "config.json").is_file()
