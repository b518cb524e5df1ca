"""submit / status / logs / cancel against the real dev cluster (no mocked sbatch)."""

from __future__ import annotations

import os
import subprocess
import textwrap
import threading
import time
from pathlib import Path

import pytest

from devtools.wait import wait_for
from tests.conftest import hpcft, hpcft_json

pytestmark = pytest.mark.slurm

HELLO = """\
import os, sys
print("ARGS", sys.argv[1:])
for k in ("CUDA_VISIBLE_DEVICES", "ASCEND_RT_VISIBLE_DEVICES", "HF_HUB_OFFLINE", "GREETING", "HPCFT_RUN_DIR"):
    print(k, "=", os.environ.get(k))
"""


def make_job(tmp_path: Path, body: str, name: str = "job.yaml") -> Path:
    (tmp_path / "hello.py").write_text(HELLO)
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def queue(name: str) -> list[str]:
    """The queued jobs named ``name`` (only those: other tests' jobs share the queue)."""
    return subprocess.run(["squeue", "-h", "-n", name, "-o", "%i"], capture_output=True, text=True,
                          check=True).stdout.split()


def wait_state(run_id: str, timeout: float = 60) -> dict:
    return wait_for(lambda: hpcft_json("status", run_id),
                    until=lambda st: st["state"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL",
                                                     "OUT_OF_MEMORY"),
                    timeout=timeout, interval=0.5, what=f"run {run_id} to end")


def submit(path: Path, *extra: str) -> dict:
    return hpcft_json("submit", str(path), *extra)


def test_script_job_completes_and_logs(slurm, tmp_path):
    job = make_job(tmp_path, """\
        name: hello
        script: hello.py
        args: [one, 2]
        resources: {partition: cpu, time: "00:05:00"}
        """)
    res = submit(job)
    assert res["job_id"].isdigit() and Path(res["log"]).name == f"job.{res['job_id']}.out"
    st = wait_state(res["run_id"])
    assert st["state"] == "COMPLETED", st
    logs = hpcft("logs", res["run_id"], check=True).stdout
    assert "ARGS ['one', '2']" in logs and "HF_HUB_OFFLINE = 1" in logs
    run_dir = Path(res["run_dir"])
    for name in ("job.yaml", "job.source.yaml", "job.sh", "run.json", "launch.json"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "submitit").is_dir()
    # the job id finds the run too
    assert hpcft_json("status", res["job_id"])["run_id"] == res["run_id"]


def test_gpu_and_npu_devices(slurm, tmp_path):
    gpu = submit(make_job(tmp_path, """\
        name: gpu2
        script: hello.py
        resources: {partition: gpu, gpus_per_node: 2, time: "5"}
        """, "gpu.yaml"))
    npu = submit(make_job(tmp_path, """\
        name: npu2
        script: hello.py
        resources: {partition: npu, npus_per_node: 2, time: "5"}
        """, "npu.yaml"))
    # a 2-device job runs one task per device; both tasks print, so look at task 0's lines
    assert wait_state(gpu["run_id"])["state"] == "COMPLETED"
    assert "CUDA_VISIBLE_DEVICES = 0,1" in hpcft("logs", gpu["run_id"]).stdout
    assert wait_state(npu["run_id"])["state"] == "COMPLETED"
    out = hpcft("logs", npu["run_id"]).stdout
    assert "ASCEND_RT_VISIBLE_DEVICES = 0,1" in out
    assert "CUDA_VISIBLE_DEVICES = None" in out


def test_failing_setup_reported_fast(slurm, tmp_path):
    job = make_job(tmp_path, """\
        name: badsetup
        script: hello.py
        env: {modules: [no-such-module/1.0]}
        resources: {time: "5"}
        """)
    res = submit(job)
    start = time.monotonic()
    st = wait_state(res["run_id"], timeout=30)
    assert st["state"] == "FAILED"
    assert time.monotonic() - start < 25  # scheduling + start + failure, on a loaded 2-core CI machine
    assert "module load" in (st["error"] or ""), st
    # logs -f on a finished failed job returns at once, non-zero
    proc = hpcft("logs", "-f", res["run_id"], timeout=20)
    assert proc.returncode == 1 and "FAILED" in proc.stderr


def test_cancel_and_follow(slurm, tmp_path):
    (tmp_path / "slow.py").write_text("import time\nprint('tick', flush=True)\ntime.sleep(120)\n")
    job = tmp_path / "slow.yaml"
    job.write_text("name: slow\nscript: slow.py\nresources: {time: '5'}\n")
    res = submit(job)
    follower = subprocess.Popen(["python", "-m", "hpcft.cli.main", "logs", "-f", res["run_id"]],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=os.environ.copy())
    wait_for(lambda: hpcft_json("status", res["run_id"]), until=lambda st: st["state"] == "RUNNING",
             timeout=30, interval=0.3, what=f"run {res['run_id']} to start")
    # the job has printed its line before it is cancelled (this was a fixed 1.5 s sleep)
    log = Path(res["log"])
    wait_for(lambda: log.exists() and "tick" in log.read_text(), timeout=30, interval=0.2,
             what=f"job {res['job_id']} to print 'tick' to {log}",
             describe=lambda _: log.read_text()[-2000:] if log.exists() else f"no {log} yet")
    proc = hpcft("cancel", res["run_id"], check=True)
    assert f"cancelled job {res['job_id']}" in proc.stdout
    assert wait_state(res["run_id"])["state"] == "CANCELLED"
    out, err = follower.communicate(timeout=30)
    assert "tick" in out and "CANCELLED" in err and follower.returncode == 1


def test_dry_run_submits_nothing(slurm, tmp_path, hpcft_home):
    job = make_job(tmp_path, "name: dry\nscript: hello.py\nresources: {time: '5'}\n")
    before = queue("dry")
    proc = hpcft("submit", str(job), "--dry-run", check=True)
    assert proc.stdout.startswith("#!/bin/bash") and "#SBATCH --job-name=dry" in proc.stdout
    assert "nothing submitted" in proc.stderr
    assert queue("dry") == before
    assert not (hpcft_home / "runs").exists() or not list((hpcft_home / "runs").glob("*/run.json"))


def test_hostile_values_are_inert(slurm, tmp_path):
    for f in ("/tmp/pwned", "/tmp/pwned2", "/tmp/pwned3"):
        Path(f).unlink(missing_ok=True)
    job = make_job(tmp_path, """\
        name: 'x"; touch /tmp/pwned; "'
        script: hello.py
        args: ['$(touch /tmp/pwned2)', "'; touch /tmp/pwned3; '", 'a b']
        env:
          vars: {GREETING: '`id` $(id) "; touch /tmp/pwned'}
        resources: {time: "5"}
        """)
    res = submit(job)
    assert wait_state(res["run_id"])["state"] == "COMPLETED"
    out = hpcft("logs", res["run_id"]).stdout
    assert "ARGS ['$(touch /tmp/pwned2)', \"'; touch /tmp/pwned3; '\", 'a b']" in out
    assert 'GREETING = `id` $(id) "; touch /tmp/pwned' in out
    assert not any(Path(f).exists() for f in ("/tmp/pwned", "/tmp/pwned2", "/tmp/pwned3"))
    name = subprocess.run(["scontrol", "show", "job", res["job_id"]], capture_output=True, text=True).stdout
    assert 'JobName=x"; touch /tmp/pwned; "' in name


@pytest.mark.parametrize("override,expect", [
    ("resources.partition=gpu80", "partition 'gpu80' not found; partitions: cpu, gpu, npu"),
    ("resources.gpus_per_node=8", "8 gpus per node requested but nodes of 'gpu' have at most 2"),
    ("resources.time=3-00:00:00", "exceeds the MaxTime 1-00:00:00 of partition 'cpu'"),
    ("resources.nodes=5", "5 nodes requested but partition 'cpu' has 1"),
])
def test_preflight_errors_submit_nothing(slurm, tmp_path, hpcft_home, override, expect):
    job = make_job(tmp_path, "name: pre\nscript: hello.py\nresources: {partition: cpu}\n")
    sets = ["--set", override]
    if "gpus_per_node" in override:
        sets += ["--set", "resources.partition=gpu"]
    before = queue("pre")
    proc = hpcft("submit", str(job), *sets)
    assert proc.returncode == 2, proc.stderr
    assert expect in proc.stderr and proc.stderr.startswith(str(job)), proc.stderr
    assert queue("pre") == before
    assert not list((hpcft_home / "runs").glob("*/run.json")) if (hpcft_home / "runs").exists() else True


def test_concurrent_submits_keep_index(slurm, tmp_path):
    job = make_job(tmp_path, "name: many\nscript: hello.py\nresources: {time: '5'}\n")
    results: list[dict] = []

    def one():
        results.append(submit(job))

    threads = [threading.Thread(target=one) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    runs = hpcft_json("runs")
    assert {r["run_id"] for r in results} <= {r["run_id"] for r in runs}
    assert len({r["run_id"] for r in results}) == 4
    for r in results:
        wait_state(r["run_id"])


def test_local_executor(tmp_path):
    job = make_job(tmp_path, "name: loc\nscript: hello.py\nargs: [x]\nexecutor: local\n")
    proc = hpcft("submit", str(job), "--wait", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "ARGS ['x']" in proc.stdout
    runs = hpcft_json("runs")
    assert runs[0]["executor"] == "local" and runs[0]["state"] == "COMPLETED"


@pytest.mark.slow
def test_logs_follow_across_requeue(slurm, tmp_path):
    """A requeued job keeps one log (append mode); logs -f follows both runs; status counts restarts."""
    (tmp_path / "twice.py").write_text(textwrap.dedent("""\
        import os, time
        n = os.environ.get("SLURM_RESTART_COUNT", "0")
        print("run", n, flush=True)
        time.sleep(4 if n == "0" else 1)
        print("done", n, flush=True)
        """))
    job = tmp_path / "twice.yaml"
    job.write_text("name: twice\nscript: twice.py\nresources: {time: '5'}\n")
    res = submit(job)
    follower = subprocess.Popen(["python", "-m", "hpcft.cli.main", "logs", "-f", res["run_id"]],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    log = Path(res["log"])
    wait_for(lambda: log.exists() and "run 0" in log.read_text(), timeout=30, interval=0.2,
             what=f"job {res['job_id']} to print 'run 0' to {log}",
             describe=lambda _: log.read_text()[-2000:] if log.exists() else f"no {log} yet")
    subprocess.run(["scontrol", "requeue", res["job_id"]], check=True)
    st = wait_state(res["run_id"], timeout=90)
    assert st["state"] == "COMPLETED" and st["restarts"] == 1, st
    out, err = follower.communicate(timeout=30)
    assert "run 0" in out and "run 1" in out and "done 1" in out, out
    assert follower.returncode == 0 and "COMPLETED" in err


def test_check_prints_every_step(slurm, tmp_path):
    job = make_job(tmp_path, "name: chk\nscript: hello.py\nresources: {gpus_per_node: 2, time: '5'}\n"
                             "assets: {models: [never-staged/model]}\n")
    proc = hpcft("check", str(job))
    assert proc.returncode == 2
    lines = proc.stdout.splitlines()
    assert lines[0] == "✓ job file"
    assert "✓ partition: gpu" in lines and "✓ gres: gpu:2 per node" in lines
    assert any(ln.startswith("✗ assets staged: hpcft stage never-staged/model") for ln in lines), lines
