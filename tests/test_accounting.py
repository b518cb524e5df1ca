"""Pre-flight and status on a cluster with accounting (slurmdbd + MariaDB), as SCOW clusters have.

Uses a private dev-slurm instance on its own ports so the shared test cluster keeps running.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from devtools.wait import wait_for
from tests.conftest import IN_CI, ROOT, hpcft, hpcft_json

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
ACCT_DIR = "/var/tmp/hpcft-acct"
ACCT_PORT = "6927"


@pytest.fixture(scope="module")
def acct_conf():
    env = {**os.environ, "HPCFT_DEV_SLURM_DIR": ACCT_DIR, "HPCFT_DEV_SLURM_PORT": ACCT_PORT}
    if os.geteuid() != 0:
        pytest.skip("needs root to start slurmdbd/MariaDB")
    proc = subprocess.run(["bash", str(ROOT / "devtools/cluster/dev-slurm"), "up", "--accounting"], env=env,
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        msg = f"accounting cluster did not start:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    yield f"{ACCT_DIR}/etc/slurm.conf"
    subprocess.run(["bash", str(ROOT / "devtools/cluster/dev-slurm"), "down"], env=env, capture_output=True, timeout=120)


@pytest.fixture
def acct(acct_conf, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", acct_conf)
    return acct_conf


def job_file(tmp_path: Path, extra: str = "") -> Path:
    (tmp_path / "hello.py").write_text("print('accounted')\n")
    path = tmp_path / "job.yaml"
    path.write_text(f"name: acct\nscript: hello.py\nresources: {{time: '5'{extra}}}\n")
    return path


def test_unknown_account_and_qos_rejected_before_sbatch(acct, tmp_path):
    path = job_file(tmp_path, ", account: nonexistent, qos: gold")
    proc = hpcft("submit", str(path))
    assert proc.returncode == 2, proc.stderr
    assert "account 'nonexistent' is not yours; your accounts: research" in proc.stderr
    assert "qos 'gold' is not allowed for you" in proc.stderr


def test_accounted_job_and_sacct_status(acct, tmp_path, monkeypatch):
    res = hpcft_json("submit", str(job_file(tmp_path, ", account: research")))
    wait_for(lambda: hpcft_json("status", res["run_id"]), until=lambda st: st["state"] == "COMPLETED",
             fail=lambda st: st["state"] in ("FAILED", "CANCELLED"), timeout=60, interval=0.5,
             what=f"accounted run {res['run_id']} to complete")
    # the controller forgets finished jobs after MinJobAge: then state comes from sacct
    from hpcft.cluster import slurm

    real_run = slurm._run

    def forgetful(args, *a, **kw):
        if args[:3] == ["scontrol", "show", "job"]:
            return subprocess.CompletedProcess(args, 1, "", "slurm_load_jobs error: Invalid job id specified")
        return real_run(args, *a, **kw)

    monkeypatch.setattr(slurm, "_run", forgetful)
    # Why this cannot race (a fresh-clone CI run once read PENDING here): slurmdbd records the
    # end a moment after the controller, so sacct is polled until it says the job ended, and the
    # cluster is this module's own (its own dir and ports), so no other test's job is in it.
    info = wait_for(lambda: slurm.job_info(res["job_id"]), until=lambda info: info is not None and info.terminal,
                    timeout=30, interval=0.5, what=f"job {res['job_id']} to show up ended in sacct",
                    describe=lambda info: f"sacct's job info {info}")
    assert info.source == "sacct" and info.state == "COMPLETED" and info.exit_code == "0:0"


def _sacctmgr(*args: str) -> None:
    subprocess.run(["sacctmgr", "-i", "-Q", *args], check=True, capture_output=True, text=True, timeout=60)


def _raw_array_accepted(size: int) -> bool:
    """Slurm's own answer to an array of ``size`` tasks (cancelled at once when accepted)."""
    proc = subprocess.run(["sbatch", "--parsable", "--hold", f"--array=0-{size - 1}", "-t", "1", "--wrap", "true"],
                          capture_output=True, text=True, timeout=60)
    if proc.returncode == 0:
        subprocess.run(["scancel", proc.stdout.strip().split(";")[0]], capture_output=True, timeout=60)
    return proc.returncode == 0


def test_sweep_above_max_submit_jobs_refused_before_sbatch(acct, tmp_path):
    """The user's MaxSubmitJobs, set in the accounting database the way a site admin sets it:
    a 9-point sweep is refused by the pre-flight (where Slurm itself would reject the array),
    a 3-point sweep is accepted and runs."""
    (tmp_path / "hello.py").write_text("import sys; print('point', sys.argv[1:])\n")

    def sweep(name: str, points: int) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(f"name: {name}\nscript: hello.py\nresources: {{time: '5', account: research}}\n"
                        f"sweep: {{grid: {{args: {[[str(i)] for i in range(points)]}}}}}\n")
        return path

    _sacctmgr("modify", "user", "where", "name=root", "set", "maxsubmitjobs=4")
    try:
        # slurmctld learns the limit from slurmdbd a moment later
        wait_for(lambda: not _raw_array_accepted(9), timeout=30, interval=1,
                 what="Slurm to enforce MaxSubmitJobs=4 (sbatch refusing a 9-task array)",
                 describe=lambda _: "sbatch still accepted a 9-task array")
        proc = hpcft("submit", str(sweep("too-many", 9)))
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "9 tasks exceed your MaxSubmitJobs 4" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
        res = hpcft_json("submit", str(sweep("fits", 3)))
        assert len(res["tasks"]) == 3
        wait_for(lambda: hpcft_json("status", res["sweep_id"]), until=lambda st: st["states"] == {"COMPLETED": 3},
                 fail=lambda st: "FAILED" in st["states"], timeout=120, interval=1,
                 what=f"all 3 tasks of sweep {res['sweep_id']} to complete")
    finally:
        _sacctmgr("modify", "user", "where", "name=root", "set", "maxsubmitjobs=-1")
