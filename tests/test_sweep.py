"""Sweeps: expansion and validation (unit), the array parsers on captured Slurm output, and a
3x3 sweep as one job array on the dev Slurm (9 run folders, status, show, runs, cancel)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from devtools.wait import wait_for
from hpcft.cluster.slurm import parse_array_states, parse_config, parse_index_set
from hpcft.core.config import Settings
from hpcft.core.errors import ConfigError
from hpcft.core.job_load import load_job
from hpcft.core.progress_log import read_progress
from hpcft.submit.sweep import array_spec, expand, sweep_points
from tests.conftest import hpcft, hpcft_json

GRID = {"train.learning_rate": ["1e-3", "3e-3", "1e-2"], "train.seed": [1, 2, 3]}


def _job(tmp_path: Path, sweep: dict, name: str = "sw", **extra) -> Path:
    doc = {"name": name, "train": {"model": "bert-base-uncased", "dataset": "glue/mrpc"}, "sweep": sweep, **extra}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_grid_expands_to_every_combination(tmp_path):
    loaded = load_job(_job(tmp_path, {"grid": GRID, "max_parallel": 4}), Settings())
    pairs = expand(loaded)
    assert len(pairs) == 9
    got = [(job.job.train.learning_rate, job.job.train.seed) for _, job in pairs]
    assert got[:3] == [(1e-3, 1), (1e-3, 2), (1e-3, 3)] and len(set(got)) == 9
    assert all(job.job.sweep is None for _, job in pairs)
    assert array_spec(9, 4) == "0-8%4" and array_spec(3, None) == "0-2"


def test_explicit_points_and_per_point_output_dirs(tmp_path):
    points = [{"train.learning_rate": 1e-5}, {"train.learning_rate": 2e-5, "train.epochs": 1}]
    loaded = load_job(_job(tmp_path, {"points": points}, output_dir="out"), Settings())
    assert sweep_points(loaded.job) == points
    jobs = [job.job for _, job in expand(loaded)]
    assert [j.train.epochs for j in jobs] == [3, 1]
    assert [j.output_dir for j in jobs] == ["out/0", "out/1"]  # tasks never share an output folder


def test_bad_sweeps_report_every_problem(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_job(_job(tmp_path, {"grid": GRID, "points": [{}]}), Settings())
    assert "exactly one of them" in str(err.value)
    bad = {"grid": {"train.learning_rate": [1e-5, -1], "train.learning_rat": [1]}}
    with pytest.raises(ConfigError) as err:
        expand(load_job(_job(tmp_path, bad), Settings()))
    text = "\n".join(err.value.problems)
    assert "sweep point 1 (train.learning_rate=-1, train.learning_rat=1): train.learning_rate: Input should be" in text
    assert "sweep point 0 (train.learning_rate=1e-05, train.learning_rat=1) and 1 more: train.learning_rat: " \
        "Extra inputs are not permitted" in text
    assert len(err.value.problems) == 2
    with pytest.raises(ConfigError) as err:
        expand(load_job(_job(tmp_path, {"grid": {"resources.partition": ["a", "b"]}}), Settings()))
    assert "every array task runs one script" in str(err.value)


def test_cli_refuses_a_bad_sweep_with_exit_2(tmp_path):
    proc = hpcft("submit", str(_job(tmp_path, {"grid": {"env.vars.X": [1, 2]}})), "--executor", "slurm")
    assert proc.returncode == 2 and "sweep: env.vars.X" in proc.stderr


# captured from the dev cluster (Slurm 22.05): a 4-task array, 2 done, 1 running, 1 pending
SCONTROL_ARRAY = (
    "JobId=75 ArrayJobId=72 ArrayTaskId=3 JobName=sw JobState=PENDING Reason=JobArrayTaskLimit Dependency=(null)\n"
    "JobId=74 ArrayJobId=72 ArrayTaskId=2 JobName=sw JobState=RUNNING Reason=None Dependency=(null)\n"
    "JobId=73 ArrayJobId=72 ArrayTaskId=1 JobName=sw JobState=COMPLETED Reason=None Dependency=(null)\n"
    "JobId=72 ArrayJobId=72 ArrayTaskId=0 JobName=sw JobState=COMPLETED Reason=None Dependency=(null)\n"
)


def test_array_parsers():
    assert parse_array_states(SCONTROL_ARRAY, "72") == {0: "COMPLETED", 1: "COMPLETED", 2: "RUNNING", 3: "PENDING"}
    pending = "JobId=80 ArrayJobId=80 ArrayTaskId=2-8%3 JobName=x JobState=PENDING Reason=JobArrayTaskLimit\n"
    assert parse_array_states(pending, "80") == {i: "PENDING" for i in range(2, 9)}
    assert parse_index_set("0-3,7,9-13:2%4") == [0, 1, 2, 3, 7, 9, 11, 13]
    cfg = parse_config("Configuration data as of 2026-11-29T15:00:00\nMaxArraySize            = 1001\n"
                       "MaxJobCount             = 10000\n")
    assert cfg["MaxArraySize"] == "1001" and cfg["MaxJobCount"] == "10000"


# --------------------------------------------------------------------------- on the dev Slurm

def _queue_names() -> list[str]:
    return subprocess.run(["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True, check=True).stdout.split("\n")


@pytest.mark.slurm
@pytest.mark.slow
def test_3x3_sweep_is_one_array_job(slurm, hpcft_home, tmp_path):
    from devtools.runs import fixture_folders, stage_standard

    stage_standard(hpcft_home / "cache", fixture_folders(tmp_path / "fixtures"))
    doc = {"name": "sweep-3x3", "executor": "slurm",
           "train": {"model": "bert-base-uncased", "dataset": "glue/mrpc", "metric": "glue", "epochs": 2,
                     "batch_size": 16, "logging_steps": 5, "train_subset": 96, "eval_subset": 64},
           "resources": {"partition": "cpu", "time": "00:10:00"},
           "env": {"vars": {"OMP_NUM_THREADS": "1"}},
           "sweep": {"grid": GRID, "max_parallel": 3}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    sub = hpcft_json("submit", str(path), timeout=120)
    array = sub["job_id"]
    lines = [ln for ln in _queue_names() if ln.endswith(" sweep-3x3")]
    assert lines and all(ln.split()[0].startswith(f"{array}_") for ln in lines), lines  # one array job
    folders = sorted(Path(sub["run_dir"]).glob(f"{sub['sweep_id']}-*"))
    assert len(folders) == 9
    pairs = {(y["train"]["learning_rate"], y["train"]["seed"])
             for y in (yaml.safe_load((f / "job.yaml").read_text()) for f in folders)}
    assert len(pairs) == 9 and {lr for lr, _ in pairs} == {1e-3, 3e-3, 1e-2}
    wait_for(lambda: hpcft_json("status", sub["sweep_id"]), until=lambda st: st["states"].get("COMPLETED") == 9,
             fail=lambda st: any(t["state"] in ("FAILED", "CANCELLED", "TIMEOUT") for t in st["tasks"]),
             timeout=400, interval=2, what=f"all 9 tasks of sweep {sub['sweep_id']} to complete")
    assert hpcft_json("status", array)["sweep_id"] == sub["sweep_id"]  # the array job id finds the sweep
    shown = hpcft_json("show", sub["sweep_id"])
    values = [r["value"] for r in shown["ranking"]]
    assert None not in values and values == sorted(values, reverse=True)
    best = shown["best"]
    metrics = json.loads((Path(sub["run_dir"]) / best["run_id"] / "metrics.json").read_text())
    assert metrics["eval"][metrics["headline"]] == best["value"]
    text = hpcft("show", sub["sweep_id"], check=True).stdout
    assert f"best:      task {best['index']} (train.learning_rate={best['point']['train.learning_rate']}" in text
    rows = hpcft_json("runs")
    assert [r["run_id"] for r in rows if r.get("sweep")] == [sub["sweep_id"]]  # grouped: one row
    assert rows[0]["state"] == "sweep of 9: 9 COMPLETED" and rows[0]["metric"].startswith("best ")
    task_log = hpcft("logs", f"{array}_4", check=True).stdout  # a task by its Slurm id
    assert "hpcft: done:" in task_log


@pytest.mark.slurm
def test_cancel_sweep_cancels_every_task(slurm, tmp_path):
    (tmp_path / "slow.py").write_text("import time\nprint('tick', flush=True)\ntime.sleep(300)\n")
    doc = {"name": "sweep-cancel", "script": "slow.py", "resources": {"time": "5"},
           "sweep": {"grid": {"args": [["a"], ["b"], ["c"], ["d"]]}, "max_parallel": 2}}
    path = tmp_path / "cancel.yaml"
    path.write_text(yaml.safe_dump(doc))
    sub = hpcft_json("submit", str(path))
    wait_for(lambda: hpcft_json("status", sub["sweep_id"]), until=lambda st: st["states"].get("RUNNING", 0) >= 1,
             timeout=240, interval=0.5, what=f"a task of sweep {sub['sweep_id']} to run")
    proc = hpcft("cancel", sub["sweep_id"], check=True)
    assert f"cancelled job array {sub['job_id']}" in proc.stdout
    wait_for(lambda: hpcft_json("status", sub["sweep_id"]), until=lambda st: st["states"] == {"CANCELLED": 4},
             timeout=240, interval=0.5, what=f"all 4 tasks of sweep {sub['sweep_id']} to be CANCELLED")
    assert not [ln for ln in _queue_names() if ln.endswith(" sweep-cancel")]


@pytest.mark.slurm
@pytest.mark.slow
def test_an_array_task_requeues_and_resumes_on_its_own(slurm, hpcft_home, tmp_path):
    """USR2 (what Slurm sends before the time limit) to one task: it checkpoints, requeues
    itself (`scontrol requeue <array>_<i>`) and resumes from its own run folder; the other
    task is untouched."""
    from devtools.faults import fault_env
    from devtools.runs import fixture_folders, stage_standard

    stage_standard(hpcft_home / "cache", fixture_folders(tmp_path / "fixtures"))
    doc = {"name": "sweep-requeue", "executor": "slurm",
           "train": {"model": "bert-base-uncased", "dataset": "glue/mrpc", "metric": "glue", "epochs": 2,
                     "batch_size": 16, "logging_steps": 5, "learning_rate": 3e-3},
           "resources": {"partition": "cpu", "time": "00:10:00"},
           "env": {"vars": {"OMP_NUM_THREADS": "1", **fault_env(step_sleep=0.1)}},
           "sweep": {"grid": {"train.seed": [1, 2]}}}
    path = tmp_path / "requeue.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    sub = hpcft_json("submit", str(path), timeout=120)
    task = Path(sub["run_dir"]) / sub["tasks"][1]

    def events(folder: Path) -> list[dict]:
        return read_progress(folder / "progress.jsonl")

    wait_for(lambda: any(e["event"] == "train" and e.get("step", 0) >= 20 for e in events(task)), timeout=180,
             interval=0.3, what=f"task {sub['job_id']}_1 to reach train step 20",
             describe=lambda _: "no train step >= 20 yet; the task's log: "
                                + hpcft("logs", f"{sub['job_id']}_1").stdout[-2000:])
    subprocess.run(["scancel", "--signal=USR2", f"{sub['job_id']}_1"], check=True)
    wait_for(lambda: hpcft_json("status", sub["sweep_id"]), until=lambda st: st["states"] == {"COMPLETED": 2},
             fail=lambda st: "FAILED" in st["states"], timeout=420, interval=2,
             what=f"both tasks of sweep {sub['sweep_id']} to complete after task 1's requeue")
    one = hpcft_json("status", f"{sub['job_id']}_1")
    assert one["restarts"] >= 1, one
    ev = events(task)
    stop = next(e for e in ev if e["event"] == "signal")["step"]
    assert next(e for e in ev if e["event"] == "resume")["step"] == stop
    assert not [e for e in events(Path(sub["run_dir"]) / sub["tasks"][0]) if e["event"] in ("signal", "resume")]


def test_render_prints_the_array_script(tmp_path):
    proc = hpcft("render", str(_job(tmp_path, {"grid": GRID, "max_parallel": 3})), "--partition", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert "#SBATCH --array=0-8%3" in proc.stdout and "/job.%A_%a.out" in proc.stdout


@pytest.mark.slurm
def test_preflight_refuses_an_array_larger_than_max_array_size(slurm, tmp_path):
    (tmp_path / "hello.py").write_text("print('hi')\n")
    size = int(parse_config(subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True,
                                           check=True).stdout)["MaxArraySize"]) + 1
    doc = {"name": "sweep-too-big", "script": "hello.py", "resources": {"time": "5"},
           "sweep": {"grid": {"args": [[str(i)] for i in range(size)]}}}
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(doc))
    proc = hpcft("submit", str(path))
    assert proc.returncode == 2, proc.stderr
    assert f"array size: {size} points but the site's MaxArraySize is {size - 1}" in proc.stderr
    assert not [ln for ln in _queue_names() if ln.endswith(" sweep-too-big")]


def test_array_script_golden(tmp_path, monkeypatch):
    from hpcft.submit.render import make_plan, render_script
    from tests.test_render import ROOT, check_golden

    monkeypatch.delenv("HPCFT_CACHE", raising=False)
    settings = Settings(runs_dir=Path("/runs"), cache_dir=Path("/cache"))
    pairs = expand(load_job(_job(tmp_path, {"grid": GRID, "max_parallel": 3}), settings))
    root = Path("/runs/SWEEP-ID")
    plan = make_plan(pairs[0][1], settings, root, "cpu", python="python", array=array_spec(9, 3),
                     log_dir=f"{root}/SWEEP-ID-%a")
    plan.created = "2026-01-01 00:00:00 +0000"
    text = render_script(plan).replace(str(tmp_path), "<job-dir>").replace(str(ROOT), "<repo>")
    check_golden("sweep-array.sbatch", text)
