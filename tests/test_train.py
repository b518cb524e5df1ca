"""The worker trains the tiny BERT for real (subprocesses, no Slurm, no network).

Each run is `python -m hpcft.worker RUN_DIR` on a run folder written exactly as
`hpcft submit` writes it, against fixtures staged with register_local under the names
users type. HF_ENDPOINT and the proxies point at a closed port: any network access fails.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
from pathlib import Path

import pytest
import yaml

from devtools.hub.pytest_fixtures import hub_fixtures  # noqa: F401
from devtools.runs import ROOT, make_run, run_worker, stage_standard, start_paused_worker, tiny_job
from hpcft.worker.checkpoints import MARKER
from hpcft.worker.timelimit import EXIT_REQUEUE

pytestmark = [pytest.mark.slow, pytest.mark.worker]

LEARNS = {"learning_rate": 3e-3, "epochs": 6}


@pytest.fixture
def staged(hub_fixtures, hpcft_home):  # noqa: F811
    return stage_standard(hpcft_home / "cache", hub_fixtures)


def _events(paths):
    return [json.loads(line) for line in paths.progress.read_text().splitlines()]


def _ok(proc):
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"


def test_mrpc_trains_above_chance_and_writes_results(staged):
    paths = make_run(tiny_job(**LEARNS, save_best=True))
    proc = run_worker(paths)
    _ok(proc)
    m = json.loads(paths.metrics.read_text())
    assert m["headline"] == "accuracy" and m["eval"]["accuracy"] >= 0.75, m["eval"]
    assert m["completed"] and m["device"] == "cpu" and m["precision"] == "fp32"
    assert m["train"]["samples_per_second"] > 0 and m["train"]["global_step"] == 192
    assert m["peak_memory_mb"]["host_rss_mb"] > 0 and m["first_step_s"] > 0  # its speed: benchmarks/bench_train.py
    assert {"torch", "transformers", "datasets", "hpcft"} <= set(m["versions"])
    assert m["metric_source"].endswith("glue.py")  # the staged evaluate module scored it
    assert [h["epoch"] for h in m["eval_history"]] == [1, 2, 3, 4, 5, 6]
    out = Path(m["output_dir"])
    for f in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (out / f).is_file(), f
    assert (out / "best" / "hpcft-best.json").is_file()
    assert (paths.dir / "curves.png").read_bytes()[:4] == b"\x89PNG"
    ev = _events(paths)
    train = [e for e in ev if e["event"] == "train"]
    assert train and all({"step", "epoch", "loss", "learning_rate", "eta"} <= set(e) for e in train)
    assert ev[-1]["event"] == "done"
    assert not (paths.dir / "checkpoints").exists()  # completed: checkpoints cleaned up
    assert "hpcft: step 5/192" in proc.stdout and "hpcft: done: accuracy" in proc.stdout


def test_resume_after_the_time_limit_signal_is_exact(staged):
    """USR2 mid-epoch -> checkpoint at the step boundary, exit; rerun resumes, same final numbers."""
    job = tiny_job(learning_rate=3e-3, epochs=2)
    ref = make_run(job)
    _ok(run_worker(ref))

    paths = make_run(job)
    proc = start_paused_worker(paths, step=40)   # paused until the signal: no race with the last steps
    proc.send_signal(signal.SIGUSR2)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_REQUEUE, out[-3000:]
    stop = next(e for e in _events(paths) if e["event"] == "signal")["step"]
    assert 40 <= stop < 64 and (paths.dir / "checkpoints" / f"checkpoint-{stop}" / MARKER).is_file()

    _ok(run_worker(paths))
    ev = _events(paths)
    resume = next(e for e in ev if e["event"] == "resume")
    assert resume["step"] == stop  # resumed, not restarted
    steps = [e["step"] for e in ev if e["event"] == "train"]
    assert steps == sorted(steps) and len(steps) == len(set(steps))  # no step trained twice
    assert [e["step"] for e in ev if e["event"] == "eval"] == [32, 64]  # finished epoch 1 not redone
    a, b = json.loads(ref.metrics.read_text()), json.loads(paths.metrics.read_text())
    assert b["resumes"] == 1
    assert b["eval"]["loss"] == pytest.approx(a["eval"]["loss"], rel=1e-6, abs=1e-7)
    assert b["eval"]["accuracy"] == a["eval"]["accuracy"]
    assert b["train"]["global_step"] == a["train"]["global_step"] == 64


def test_csv_text_classifier_example_job(staged, tmp_path):
    doc = yaml.safe_load((ROOT / "jobs" / "csv-text-classifier.yaml").read_text())
    (tmp_path / "data").mkdir()
    shutil.copy(ROOT / "jobs" / "data" / "reviews.csv", tmp_path / "data")
    doc["train"].update(learning_rate=3e-3, epochs=4, batch_size=16)
    doc["resources"] = {}
    paths = make_run(doc, job_dir=tmp_path)  # data/reviews.csv resolves next to the job file
    _ok(run_worker(paths))
    m = json.loads(paths.metrics.read_text())
    assert m["data"]["label_column"] == "target" and m["data"]["num_labels"] == 2
    assert m["eval"]["accuracy"] >= 0.8, m["eval"]
    config = json.loads((Path(m["output_dir"]) / "config.json").read_text())
    assert set(config["id2label"].values()) == {"negative", "positive"}


def test_nan_loss_stops_the_run_with_a_clear_message(staged):
    paths = make_run(tiny_job(learning_rate=1e6, epochs=1))
    proc = run_worker(paths)
    assert proc.returncode != 0
    assert "training loss is nan" in proc.stderr and "Lower train.learning_rate" in proc.stderr
    assert _events(paths)[-1]["event"] == "failed"
    assert not paths.metrics.exists()


DISK_FULL = """
import errno, sys
import transformers
calls = []
orig = transformers.Trainer._save_optimizer_and_scheduler
def full(self, output_dir):
    calls.append(output_dir)
    if len(calls) == 2:  # the second checkpoint: model written, then the disk fills up
        raise OSError(errno.ENOSPC, "No space left on device")
    return orig(self, output_dir)
transformers.Trainer._save_optimizer_and_scheduler = full
from hpcft.worker import main
main.run(sys.argv[1])
"""


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(staged):
    paths = make_run(tiny_job(learning_rate=3e-3, epochs=3))
    import os
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    proc = subprocess.run([sys.executable, "-c", DISK_FULL, str(paths.dir)], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=120)
    assert proc.returncode != 0
    assert "disk full while writing checkpoint-64" in proc.stderr
    assert "checkpoint-32 is intact" in proc.stderr
    ckpts = paths.dir / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint-32"]
    assert (ckpts / "checkpoint-32" / MARKER).is_file() and (ckpts / "checkpoint-32" / "optimizer.pt").is_file()
    assert _events(paths)[-1]["event"] == "failed"


def test_deepspeed_named_on_one_device_is_used(staged):
    """Issue 18, bug 1: a job that names a ZeRO stage on one device (ZeRO-Offload on one GPU is
    how a model too big for the card trains there) runs under DeepSpeed, as the pre-flight counts
    it; it was dropped with a log line while the pre-flight refused the job at ZeRO-0."""
    paths = make_run(tiny_job("mrpc-ds1", deepspeed=2, max_steps=4, eval_subset=16))
    proc = run_worker(paths)
    _ok(proc)
    assert "DeepSpeed ZeRO stage 2 on 1 ranks" in proc.stdout + proc.stderr
    assert json.loads(paths.metrics.read_text())["completed"]
