"""The submit pipeline without a cluster: a job and a sweep go through the same steps, against a
fake Slurm (captured scontrol output, monkeypatched commands, an sbatch on PATH that queues
nothing). The same on the dev cluster: test_submit_slurm.py and test_sweep.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from hpcft.cluster import slurm
from hpcft.core.config import load_settings
from hpcft.core.errors import PreflightError
from hpcft.core.job_load import load_job
from hpcft.runs.index import RunStore
from hpcft.runs.sweep_record import Sweep
from hpcft.submit import pipeline
from hpcft.submit.pipeline import submit
from hpcft.submit.sweep import submit_sweep

ROOT = Path(__file__).resolve().parent.parent
PARTS = "PartitionName=cpu Default=YES MaxTime=1-00:00:00 Nodes=vm State=UP TotalNodes=1\n"
NODES = "NodeName=vm CPUTot=4 RealMemory=8000 Gres=(null) State=IDLE Partitions=cpu\n"


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """Slurm's answers for the pre-flight, and an ``sbatch`` that records its script and answers
    with job 4242. ``verdict`` is what ``sbatch --test-only`` says."""
    state = {"verdict": (True, "sbatch: Job 1 to start at ..."), "calls": []}

    def test_only(path):
        state["calls"].append("sbatch --test-only")
        return state["verdict"]

    monkeypatch.setattr(slurm, "partitions", lambda: slurm.parse_partitions(PARTS))
    monkeypatch.setattr(slurm, "nodes", lambda: slurm.parse_nodes(NODES))
    monkeypatch.setattr(slurm, "test_only", test_only)
    monkeypatch.setattr(slurm, "available", lambda: True)
    monkeypatch.setattr(slurm, "config", lambda: {"MaxArraySize": "1001", "MaxJobCount": "10000"})
    monkeypatch.setattr(slurm, "queued_jobs", lambda user: 0)
    monkeypatch.setattr(slurm, "submit_limit", lambda user: None)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/sbatch.calls\necho "Submitted batch job 4242"\n')
    sbatch.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    state["sbatch_calls"] = tmp_path / "sbatch.calls"
    return state


def _script_job(tmp_path: Path, **extra) -> Path:
    doc = {"name": "pl", "script": str(ROOT / "jobs/scripts/hello.py"),
           "resources": {"partition": "cpu", "time": "00:10:00"}, **extra}
    path = tmp_path / f"{doc['name']}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _load(path: Path):
    settings = load_settings()
    return load_job(path, settings), settings


def _sweep_job(tmp_path: Path) -> Path:
    return _script_job(tmp_path, name="plsw", sweep={"points": [{"args": ["--epochs", str(i)]} for i in range(3)],
                                                     "max_parallel": 2})


def test_one_job_goes_through_every_step(fake_slurm, tmp_path, monkeypatch):
    steps = []
    for name in ("refuse", "scow_folder", "write_script", "slurm_accepts", "queue"):
        real = getattr(pipeline, name)
        monkeypatch.setattr(pipeline, name, lambda *a, _real=real, _name=name, **kw: steps.append(_name)
                            or _real(*a, **kw))
    loaded, settings = _load(_script_job(tmp_path))
    result = submit(loaded, settings, executor="slurm")
    assert steps == ["refuse", "scow_folder", "write_script", "slurm_accepts", "refuse", "queue"]
    rec = result.record
    assert (rec.job_id, rec.state, rec.partition, rec.executor) == ("4242", "SUBMITTED", "cpu", "slurm")
    run_dir = Path(rec.run_dir)
    for name in ("job.yaml", "job.source.yaml", "launch.json", "job.sh", "run.json", "logs", "output"):
        assert (run_dir / name).exists(), name
    assert (run_dir / "job.sh").read_text() == result.script
    assert [c.line() for c in result.checks] == ["✓ partition: cpu", "✓ nodes: 1 of 1",
                                                 "✓ time: 00:10:00 (max 1-00:00:00)", "✓ assets staged",
                                                 "✓ slurm accepts: sbatch --test-only"]
    assert [r.run_id for r in RunStore(settings.runs).records()] == [rec.run_id]
    assert len(fake_slurm["sbatch_calls"].read_text().splitlines()) == 1


def test_a_sweep_goes_through_the_same_steps(fake_slurm, tmp_path, monkeypatch):
    steps = []
    for name in ("refuse", "scow_folder", "write_script", "slurm_accepts", "queue"):
        real = getattr(pipeline, name)
        monkeypatch.setattr(pipeline, name, lambda *a, _real=real, _name=name, **kw: steps.append(_name)
                            or _real(*a, **kw))
    loaded, settings = _load(_sweep_job(tmp_path))
    result = submit_sweep(loaded, settings)
    assert steps == ["refuse", "scow_folder", "write_script", "slurm_accepts", "refuse", "queue"]
    sw = result.sweep
    assert (sw.size, sw.array_job_id, sw.partition) == (3, "4242", "cpu")
    assert Sweep.load(sw.run_dir).tasks == sw.tasks
    assert "#SBATCH --array=0-2%2" in result.script
    assert [c.name for c in result.checks] == ["partition", "nodes", "time", "array size", "job count",
                                               "assets staged", "slurm accepts"]
    for i, task in enumerate(sw.task_dirs):
        assert os.readlink(task / "job.sh") == "../job.sh" and os.readlink(task / "submitit") == "../submitit"
        assert yaml.safe_load((task / "job.yaml").read_text())["args"] == ["--epochs", str(i)]
        assert json.loads((task / "run.json").read_text())["job_id"] == f"4242_{i}"
    assert len(RunStore(settings.runs).records()) == 3
    assert len(fake_slurm["sbatch_calls"].read_text().splitlines()) == 1  # one array, one sbatch


@pytest.mark.parametrize("make", [_script_job, _sweep_job])
def test_slurm_refusing_leaves_nothing_behind(fake_slurm, tmp_path, make):
    fake_slurm["verdict"] = (False, "sbatch: error: Batch job submission failed: Invalid account")
    loaded, settings = _load(make(tmp_path))
    with pytest.raises(PreflightError) as err:
        (submit_sweep if loaded.job.sweep else submit)(loaded, settings, executor="slurm")
    assert err.value.lines() == [f"{loaded.source}: slurm accepts: Batch job submission failed: Invalid account"]
    assert not [p for p in settings.runs.iterdir() if p.is_dir()]
    assert not fake_slurm["sbatch_calls"].exists()


def test_a_queued_job_keeps_its_run_folder_when_recording_fails(fake_slurm, tmp_path, monkeypatch):
    def broken(self, records):
        raise OSError("disk full")

    monkeypatch.setattr(RunStore, "add_many", broken)
    loaded, settings = _load(_script_job(tmp_path))
    with pytest.raises(OSError):
        submit(loaded, settings, executor="slurm")
    [run_dir] = [p for p in settings.runs.iterdir() if p.is_dir()]  # the queued job's folder stays
    assert (run_dir / "job.sh").is_file()


def test_dry_runs_create_nothing_and_a_failed_check_refuses_only_a_job(fake_slurm, tmp_path):
    loaded, settings = _load(_script_job(tmp_path, output_dir="/proc/x"))
    with pytest.raises(PreflightError, match="output_dir: /proc/x: under /proc"):
        submit(loaded, settings, dry_run=True, executor="slurm")
    result = submit(loaded, settings, dry_run=True, executor="slurm", raise_on_failure=False)
    assert result.record is None and "<run-id>" in result.script
    assert [c.name for c in result.checks if not c.ok] == ["output_dir"]
    assert "slurm accepts" not in [c.name for c in result.checks]  # asked only when everything else passed
    loaded, settings = _load(_sweep_job(tmp_path))
    result = submit_sweep(loaded, settings, dry_run=True)
    assert result.sweep is None and "<sweep-id>/<sweep-id>-%a/job.%A_%a.out" in result.script
    assert "slurm accepts" not in [c.name for c in result.checks]  # a sweep's dry run does not ask
    assert not settings.runs.exists() or not any(settings.runs.iterdir())
    assert fake_slurm["calls"] == []


def test_array_rules_refuse_a_sweep_over_the_site_limits(fake_slurm, tmp_path, monkeypatch):
    monkeypatch.setattr(slurm, "config", lambda: {"MaxArraySize": "2", "MaxJobCount": "3"})
    monkeypatch.setattr(slurm, "queued_jobs", lambda user: 1)
    monkeypatch.setattr(slurm, "submit_limit", lambda user: 2)
    loaded, settings = _load(_sweep_job(tmp_path))
    failed = [c.line() for c in submit_sweep(loaded, settings, dry_run=True).checks if not c.ok]
    assert failed == [
        "✗ array size: 3 points but the site's MaxArraySize is 2 (indices 0-1); split the sweep or lower its points",
        "✗ job count: 1 jobs queued + 3 tasks exceed the site's MaxJobCount 3",
        "✗ submit limit: 1 jobs queued + 3 tasks exceed your MaxSubmitJobs 2; lower the points or wait for "
        "queued jobs"]



def test_slurm_is_asked_each_thing_once_and_nothing_for_a_local_run(fake_slurm, tmp_path, monkeypatch, capsys):
    from hpcft.cli.main import main

    asked = []
    for name in ("available", "partitions", "nodes"):
        real = getattr(slurm, name)
        monkeypatch.setattr(slurm, name, lambda _real=real, _name=name: asked.append(_name) or _real())
    job = str(_script_job(tmp_path))
    assert main(["check", "--executor", "local", job]) == 0
    assert asked == []
    assert main(["check", job]) == 0
    assert sorted(asked) == ["available", "nodes", "partitions"]  # each once
    assert capsys.readouterr().out.splitlines()[-1] == "✓ slurm accepts: sbatch --test-only"
    asked.clear()
    assert main(["submit", "--dry-run", "--executor", "slurm", job]) == 0
    assert sorted(asked) == ["nodes", "partitions"]


def test_ask_cluster_asks_only_what_the_executor_needs(fake_slurm, tmp_path):
    loaded, settings = _load(_script_job(tmp_path))
    assert pipeline.ask_cluster(loaded, settings, "local") is None
    assert pipeline.ask_cluster(loaded, settings, "slurm")._available is None  # named: no ping
    assert pipeline.ask_cluster(loaded, settings, None)._available is not None  # auto: is Slurm there?
    local, settings = _load(_script_job(tmp_path, executor="local"))
    assert pipeline.ask_cluster(local, settings, None) is None
