"""The openMind CoLA tutorial on Modelers-staged assets, through the real dev cluster.

Loopback hub (Modelers API) -> `hpcft stage --job jobs/cola-bert-npu-modelers.yaml --source
modelers` -> hub shut down -> the same job, on the CPU partition (the dev cluster's npu
partition has fake gres and no torch_npu; the NPU script itself is golden-tested in
tests/test_render.py) -> the built-in trainer fine-tunes the tiny cased BERT on the learnable
CoLA stand-in -> Matthews correlation in metrics.json, `hpcft logs` and `hpcft runs`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from devtools.hub.pytest_fixtures import hub_fixtures, modelers_fixtures  # noqa: F401
from devtools.hub.server import HubServer

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.hub]

ROOT = Path(__file__).resolve().parent.parent
JOB = ROOT / "jobs" / "cola-bert-npu-modelers.yaml"
DEAD = "http://127.0.0.1:9"


def test_cola_on_modelers_staged_assets_reports_matthews(slurm, modelers_fixtures, hpcft_home,  # noqa: F811
                                                         run_hpcft, tmp_path):
    with HubServer() as hub:
        for (kind, rid), folder in modelers_fixtures.items():
            hub.add_repo(kind, rid, folder)
        Path(hpcft_home / "no-cluster-config.yaml").write_text(yaml.safe_dump(
            {"sources": {"order": ["modelers"], "modelers_endpoint": hub.url, "retries": 0}}))
        run_hpcft("stage", "--job", str(JOB), check=True, timeout=120)
        assert {e.repo_id for e in hub.log.downloads()} == {"PyTorch-NPU/bert_base_cased", "AI_Connect/glue"}

    job = yaml.safe_load(JOB.read_text())
    # the shipped job, sized for the tiny fixture BERT and run on the CPU partition
    job["train"].update(epochs=6, learning_rate=3e-3, batch_size=16, logging_steps=8, seed=7, precision="fp32")
    job.update(executor="slurm", resources={"partition": "cpu", "time": "00:10:00"},
               env={"vars": {"HF_ENDPOINT": DEAD, "HTTPS_PROXY": DEAD, "OPENMIND_HUB_ENDPOINT": DEAD}})
    path = tmp_path / "cola-modelers.yaml"
    path.write_text(yaml.safe_dump(job))
    proc = run_hpcft("submit", str(path), "--wait", timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    st = json.loads(run_hpcft("status", "--json", check=True).stdout)
    assert st["state"] == "COMPLETED", st
    metrics = json.loads((Path(st["run_dir"]) / "metrics.json").read_text())
    assert metrics["headline"] == "matthews_correlation", metrics
    assert metrics["eval"]["matthews_correlation"] >= 0.5, metrics["eval"]
    logs = run_hpcft("logs", check=True).stdout
    assert "hpcft: done: matthews_correlation" in logs
    assert "text ['sentence'], label 'label', 2 labels" in logs  # the cola preset, as for glue/cola
    name, value = json.loads(run_hpcft("runs", "--json", check=True).stdout)[0]["metric"].split()
    assert name == "matthews_correlation" and float(value) >= 0.5
