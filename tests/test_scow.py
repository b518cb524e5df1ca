"""SCOW (OpenSCOW) placement and the portal's saved job: unit checks, golden scripts, and the
real thing on the dev Slurm under a fake $HOME with scow/."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import jsonschema
import pytest

from hpcft.core.config import Scow, Settings
from hpcft.core.job import load_job
from hpcft.submit.pipeline import scow
from hpcft.submit.render import make_plan, render_script
from tests.conftest import hpcft, hpcft_json
from tests.test_render import FIXTURES, ROOT, check_golden

SCHEMA = json.loads((Path(__file__).parent / "schemas" / "scow_saved_job.schema.json").read_text())


@pytest.fixture
def fake_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / "scow").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    return home


def _plan(path: Path, settings: Settings, scow_dir: Path):
    loaded = load_job(path, settings)
    plan = make_plan(loaded, settings, Path("/runs/RUN-ID"), loaded.job.resources.partition or "cpu",
                     python="python", scow_dir=scow_dir)
    plan.created = "2026-01-01 00:00:00 +0000"
    return plan


@pytest.mark.parametrize("path", [p for p in FIXTURES if p.stem in ("script-cpu", "hostile")], ids=lambda p: p.stem)
def test_scow_golden(path, monkeypatch):
    monkeypatch.delenv("HPCFT_CACHE", raising=False)
    settings = Settings(runs_dir=Path("/runs"), cache_dir=Path("/cache"), scow=Scow(enabled=True))
    name = load_job(path, settings).job.name
    plan = _plan(path, settings, Path("/home/u/scow/jobs") / scow.folder_name(name))
    text = render_script(plan).replace(str(ROOT), "<repo>")
    chdir = next(ln for ln in text.splitlines() if ln.startswith("#SBATCH --chdir="))
    assert "/home/u/scow/jobs/" in chdir and "--rerun" in text
    check_golden(f"scow-{path.stem}.sbatch", text)
    result = subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True)
    assert result.returncode == 0, result.stderr


def test_setting_follows_portal_yaml(fake_home):
    assert scow.enabled(Settings())  # ~/scow exists: on by default
    assert not scow.enabled(Settings(scow=Scow(enabled=False)))
    (fake_home / "scow").rmdir()
    assert not scow.enabled(Settings())
    assert scow.job_folder(Settings(), "mrpc") == fake_home / "scow/jobs/mrpc"
    custom = Settings(scow=Scow(job_dir="portal/{{name}}/run", saved_jobs_dir="/shared/saved"))
    assert scow.job_folder(custom, "a/b") == fake_home / "portal/a_b/run"  # a name is one path component
    assert scow.saved_jobs_dir(custom) == Path("/shared/saved")
    assert scow.folder_name("..") == "_"


def test_saved_job_matches_the_portal_schema(fake_home, tmp_path):
    job = tmp_path / "job.yaml"
    (tmp_path / "run.py").write_text("print('hi')\n")
    job.write_text("name: 'x\"; touch /tmp/pwned'\nscript: run.py\n"
                   "resources: {partition: gpu, gpus_per_node: 2, cpus_per_task: 4, mem: 16G, qos: normal, "
                   "account: lab, time: 2h}\n")
    settings = Settings()
    plan = _plan(job, settings, scow.job_folder(settings, "x"))
    path = scow.save_template(plan, "123", "RUN-ID", plan.scow_dir / "job.123.sh")
    assert path.parent == fake_home / "scow" / "savedJobs" and path.name == 'x"; touch _tmp_pwned-123'
    doc = json.loads(path.read_text())
    jsonschema.validate(doc, SCHEMA)
    assert doc["gpuCount"] == 2 and doc["coreCount"] == 8 and doc["memory"] == "16384MB" and doc["maxTime"] == 120
    assert doc["qos"] == "normal" and doc["account"] == "lab" and doc["comment"] == "hpcft run RUN-ID"
    assert doc["command"].startswith("bash ") and doc["command"].endswith(" --rerun")
    with pytest.raises(jsonschema.ValidationError):  # the schema does reject what the portal cannot read
        jsonschema.validate({**doc, "nodeCount": "1"}, SCHEMA)
    with pytest.raises(jsonschema.ValidationError):  # a bare number: the portal's memory.split fails
        jsonschema.validate({**doc, "memory": 16384}, SCHEMA)


# --------------------------------------------------------------------------- on the dev Slurm

HELLO = "import os\nprint('HELLO from', os.environ['HPCFT_RUN_DIR'], 'in', os.getcwd(), flush=True)\n"


def _wait(ref: str, env: dict, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        st = hpcft_json("status", ref, env=env)
        if st["state"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            return st
        assert time.monotonic() < deadline, st
        time.sleep(0.5)


def portal_script(doc: dict) -> str:
    """The script the SCOW portal submits for a saved job (its Slurm adapter's options:
    -A, --partition, --qos, -J, --nodes, -c, --time in minutes, --chdir, --output, --error,
    --gres=gpu:N; the command last)."""
    lines = ["#!/bin/bash", f"#SBATCH -J {doc['jobName']}", f"#SBATCH --nodes={doc['nodeCount']}",
             f"#SBATCH -c {doc['coreCount']}", f"#SBATCH --time={doc['maxTime']}",
             f"#SBATCH --chdir={doc['workingDirectory']}", f"#SBATCH --output={doc['output']}",
             f"#SBATCH --error={doc['errorOutput']}"]
    if doc.get("account"):
        lines.append(f"#SBATCH -A {doc['account']}")
    if doc.get("partition"):
        lines.append(f"#SBATCH --partition={doc['partition']}")
    if doc.get("qos"):
        lines.append(f"#SBATCH --qos={doc['qos']}")
    if doc.get("gpuCount"):
        lines.append(f"#SBATCH --gres=gpu:{doc['gpuCount']}")
    return "\n".join(lines + ["", doc["command"], ""])


@pytest.mark.slurm
def test_scow_job_logs_script_template_and_portal_rerun(slurm, fake_home, tmp_path):
    env = {"HOME": str(fake_home)}
    (tmp_path / "hello.py").write_text(HELLO)
    job = tmp_path / "job.yaml"
    job.write_text("name: scow-hello\nscript: hello.py\nresources: {partition: cpu, time: '5'}\n")
    sub = hpcft_json("submit", str(job), "--save-template", env=env)
    assert _wait(sub["run_id"], env)["state"] == "COMPLETED"
    folder = fake_home / "scow" / "jobs" / "scow-hello"
    jid = sub["job_id"]
    for name in (f"job.{jid}.out", f"job.{jid}.err", f"job.{jid}.sh"):
        assert (folder / name).is_file() and not (folder / name).is_symlink(), name
    assert "HELLO from" in (folder / f"job.{jid}.out").read_text()
    run_dir = Path(sub["run_dir"])
    assert (run_dir / "scow").resolve() == folder.resolve()
    assert (folder / f"hpcft-{sub['run_id']}").resolve() == run_dir.resolve()
    assert os.path.samefile(run_dir / f"job.{jid}.out", folder / f"job.{jid}.out")
    assert (folder / f"job.{jid}.sh").read_text() == (run_dir / "job.sh").read_text()
    # the job ran in the portal's working directory as Slurm sees it; the script in its own folder
    work = subprocess.run(["scontrol", "show", "job", jid], capture_output=True, text=True).stdout
    assert f"WorkDir={folder}" in work
    logs = hpcft("logs", sub["run_id"], env=env, check=True).stdout
    assert f"HELLO from {run_dir} in {tmp_path}" in logs

    saved = fake_home / "scow" / "savedJobs" / f"scow-hello-{jid}"
    doc = json.loads(saved.read_text())
    jsonschema.validate(doc, SCHEMA)
    assert doc["workingDirectory"] == str(folder) and sub["run_id"] in doc["comment"]

    # resubmit from the portal: its own script around the saved command, through sbatch
    script = tmp_path / "portal.sh"
    script.write_text(portal_script(doc))
    out = subprocess.run(["sbatch", str(script)], capture_output=True, text=True, check=True,
                         env={**os.environ, **env}).stdout
    new_id = out.split()[-1]
    deadline = time.monotonic() + 240  # the rerun registers its run folder once the job starts
    while hpcft("status", new_id, env=env).returncode != 0:
        assert time.monotonic() < deadline, subprocess.run(["scontrol", "show", "job", new_id],
                                                           capture_output=True, text=True).stdout
        time.sleep(0.5)
    st = _wait(new_id, env)
    assert st["state"] == "COMPLETED", st
    assert st["run_id"] != sub["run_id"]
    rerun_log = hpcft("logs", new_id, env=env, check=True).stdout
    assert f"rerun of {sub['run_id']}" in rerun_log and f"HELLO from {st['run_dir']}" in rerun_log
    assert (folder / f"job.{new_id}.out").is_file() and (folder / f"hpcft-{st['run_id']}").is_symlink()
    runs = hpcft_json("runs", env=env)
    assert {r["job_id"] for r in runs} >= {jid, new_id}


@pytest.mark.slurm
def test_save_template_needs_scow(slurm, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/scow: placement off
    (tmp_path / "hello.py").write_text(HELLO)
    job = tmp_path / "job.yaml"
    job.write_text("name: plain\nscript: hello.py\nresources: {time: '5'}\n")
    proc = hpcft("submit", str(job), "--save-template")
    assert proc.returncode == 2 and "SCOW placement" in proc.stderr


@pytest.mark.slurm
def test_sweep_tasks_log_in_the_scow_folder(slurm, fake_home, tmp_path):
    env = {"HOME": str(fake_home)}
    (tmp_path / "hello.py").write_text(HELLO)
    job = tmp_path / "sweep.yaml"
    job.write_text("name: scow-sweep\nscript: hello.py\nresources: {time: '5'}\n"
                   "sweep: {points: [{args: [a]}, {args: [b]}]}\n")
    sub = hpcft_json("submit", str(job), env=env)
    deadline = time.monotonic() + 240
    while hpcft_json("status", sub["sweep_id"], env=env)["states"] != {"COMPLETED": 2}:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    folder = fake_home / "scow" / "jobs" / "scow-sweep"
    array = sub["job_id"]
    assert (folder / f"job.{array}.sh").read_text() == (Path(sub["run_dir"]) / "job.sh").read_text()
    for i, run_id in enumerate(sub["tasks"]):
        out = folder / f"job.{array}_{i}.out"
        assert f"HELLO from {sub['run_dir']}/{run_id}" in out.read_text()
        assert os.path.samefile(Path(sub["run_dir"]) / run_id / f"job.{array}_{i}.out", out)
        assert "HELLO from" in hpcft("logs", f"{array}_{i}", env=env, check=True).stdout


@pytest.mark.slurm
def test_portal_rerun_of_a_multi_task_job_says_what_to_do(slurm, fake_home, tmp_path):
    """The portal's form has no tasks-per-node field: a 2-GPU job resubmitted from it gets one
    task, so the rerun stops with the command that runs it right instead of hanging."""
    env = {"HOME": str(fake_home)}
    (tmp_path / "hello.py").write_text(HELLO)
    job = tmp_path / "job.yaml"
    job.write_text("name: scow-2gpu\nscript: hello.py\nresources: {partition: gpu, gpus_per_node: 2, time: '5'}\n")
    sub = hpcft_json("submit", str(job), "--save-template", env=env)
    assert _wait(sub["run_id"], env)["state"] == "COMPLETED"
    doc = json.loads((fake_home / "scow" / "savedJobs" / f"scow-2gpu-{sub['job_id']}").read_text())
    assert doc["gpuCount"] == 2 and doc["coreCount"] == 2
    script = tmp_path / "portal.sh"
    script.write_text(portal_script(doc))
    new_id = subprocess.run(["sbatch", "--wait", str(script)], capture_output=True, text=True,
                            env={**os.environ, **env}, timeout=300).stdout.split()[-1]
    err = (fake_home / "scow" / "jobs" / "scow-2gpu" / f"job.{new_id}.err").read_text()
    assert "runs 2 tasks (one per device) but this job from the SCOW portal has 1; resubmit it with: " \
           f"hpcft submit {job}" in err, err
