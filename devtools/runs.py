"""Helpers for the worker tests: stage the tiny fixtures, build run folders as submit does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import yaml

from devtools.hub.fixtures import make_standard_fixtures
from hpcft.core.config import load_settings
from hpcft.core.job_load import load_job
from hpcft.core.rundir import RunPaths
from hpcft.core.store import Cache
from hpcft.runs.index import new_run_dir
from hpcft.stage.layout import register_local

ROOT = Path(__file__).resolve().parents[1]
GLUE_CONFIGS = ("mrpc", "cola", "sst2")


def fixture_folders(root: Path) -> dict:
    return make_standard_fixtures(root)


def stage_standard(cache_root: Path, folders: dict, *, skip: tuple = ()) -> Cache:
    """Stage the fixtures under the names users type (what `hpcft stage` records)."""
    cache = Cache(cache_root)
    if "model" not in skip:
        register_local(cache, "model", "google-bert/bert-base-uncased",
                       folders[("model", "google-bert/bert-base-uncased")], aliases=["bert-base-uncased"])
        register_local(cache, "model", "google-bert/bert-base-cased",
                       folders[("model", "google-bert/bert-base-cased")], aliases=["bert-base-cased"])
    if "dataset" not in skip:
        for cfg in GLUE_CONFIGS:
            register_local(cache, "dataset", "nyu-mll/glue", folders[("dataset", "nyu-mll/glue")], config=cfg,
                           aliases=["glue"])
        register_local(cache, "dataset", "Yelp/yelp_review_full", folders[("dataset", "Yelp/yelp_review_full")],
                       aliases=["yelp_review_full"])
    if "metric" not in skip:
        register_local(cache, "metric", "evaluate-metric/glue", folders[("space", "evaluate-metric/glue")],
                       aliases=["glue"])
    return cache


def make_run(job: dict, *, job_dir: Optional[Path] = None) -> RunPaths:
    """A run folder exactly as `hpcft submit` writes it (job.yaml, launch.json, run.json), not submitted.

    With ``job_dir`` the job file is written there first (relative paths resolve against it)."""
    from hpcft.runs.index import RunRecord, RunStore, now_iso
    from hpcft.submit.pipeline import prepare_run

    settings = load_settings()
    text = yaml.safe_dump(job, sort_keys=False)
    src = None
    if job_dir is not None:
        src = Path(job_dir) / f"{job['name']}.yaml"
        src.write_text(text)
    loaded = load_job(src, settings, text=text)
    paths = new_run_dir(settings.runs, job["name"])
    prepare_run(loaded, settings, paths, None)
    RunStore(settings.runs).add(RunRecord(run_id=paths.run_id, name=job["name"], run_dir=str(paths.dir),
                                          job_file=str(src) if src else None, kind=loaded.job.kind,
                                          executor="local", submitted_at=now_iso()))
    return paths


def run_worker(paths: RunPaths, *, env: Optional[dict] = None, timeout: float = 180,
               wait: bool = True):
    """`python -m hpcft.worker RUN_DIR` in a subprocess (no network: offline env + dead proxy)."""
    full = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu",
            "HF_ENDPOINT": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
            "HTTP_PROXY": "http://127.0.0.1:9", **(env or {})}
    if env and "PYTHONPATH" in env and os.environ.get("PYTHONPATH"):
        full["PYTHONPATH"] = f"{env['PYTHONPATH']}:{os.environ['PYTHONPATH']}"
    cmd = [sys.executable, "-m", "hpcft.worker", str(paths.dir)]
    if not wait:
        return subprocess.Popen(cmd, env=full, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    return subprocess.run(cmd, env=full, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def tiny_job(name: str = "mrpc-tiny", **train) -> dict:
    spec = {"model": "bert-base-uncased", "dataset": "glue/mrpc", "metric": "glue", "epochs": 3,
            "learning_rate": 1e-3, "batch_size": 16, "logging_steps": 5, "seed": 7, **train}
    return {"name": name, "executor": "local", "train": spec}


def start_paused_worker(paths: RunPaths, *, step: int = 40, timeout: float = 90):
    """Start the worker with the pause_at fault and return its process once it is paused at
    ``step``: from then on it waits for the time-limit signal, so a test that signals now cannot
    be too late, however long a busy machine kept the test waiting. Killed if it never pauses."""
    from devtools.faults import fault_env, wait_paused
    from devtools.wait import WaitTimeout

    proc = run_worker(paths, wait=False, env=fault_env(pause_at=step))
    try:
        wait_paused(paths.dir, timeout=timeout, what=f"the worker to pause at step {step}",
                    describe=lambda _: "not paused yet; progress.jsonl ends: "
                                       + (paths.progress.read_text()[-1500:] if paths.progress.exists() else "(none)"))
    except WaitTimeout:
        proc.kill()
        raise
    return proc
