"""Pre-flight checks on a captured cluster view (the live-cluster versions are in test_submit_slurm.py)."""

import os
from pathlib import Path

import pytest

from hpcft.cluster.slurm import parse_nodes, parse_partitions
from hpcft.core.config import Settings
from hpcft.core.job import Job
from hpcft.preflight import checks, rules
from hpcft.preflight.checks import Check, ClusterView, Preflight, resolve_partition

PARTS = ("PartitionName=cpu Default=YES MaxTime=1-00:00:00 Nodes=cn[1-2] State=UP TotalNodes=2\n"
         "PartitionName=a100 Default=NO MaxTime=2-00:00:00 Nodes=g[1-2] State=UP TotalNodes=2\n"
         "PartitionName=ascend Default=NO MaxTime=UNLIMITED Nodes=n1 State=UP TotalNodes=1\n"
         "PartitionName=maint Default=NO MaxTime=UNLIMITED Nodes=cn1 State=DOWN TotalNodes=1\n")
NODES = ("NodeName=cn1 CPUTot=64 RealMemory=256000 Gres=(null) State=IDLE Partitions=cpu,maint\n"
         "NodeName=cn2 CPUTot=64 RealMemory=256000 Gres=(null) State=IDLE Partitions=cpu\n"
         "NodeName=g1 CPUTot=32 RealMemory=512000 Gres=gpu:a100:8(S:0-1) State=MIXED Partitions=a100\n"
         "NodeName=g2 CPUTot=32 RealMemory=512000 Gres=gpu:a100:4(S:0-1) State=IDLE Partitions=a100\n"
         "NodeName=n1 CPUTot=192 RealMemory=1024000 Gres=npu:8 State=IDLE Partitions=ascend\n")
VIEW = ClusterView(parse_partitions(PARTS), parse_nodes(NODES))


def job(**resources):
    return Job(name="t", script="x.py", resources=resources)


def failures(j, settings=None):
    settings = settings or Settings()
    part = resolve_partition(j, settings, VIEW)
    return [c.message for c in rules.run(Preflight(j, settings, Path("."), "slurm", VIEW, part, check_assets=False))
            if not c.ok]


def one(rule, j, base_dir):
    """The check a rule makes for a job, or None when it does not apply."""
    found = list(rule(Preflight(j, Settings(), base_dir)))
    assert len(found) <= 1, found
    return found[0] if found else None


def npu_env_check(j, base_dir):
    return one(checks.torch_npu, j, base_dir)


def test_partition_defaults_by_device():
    assert resolve_partition(job(), Settings(), VIEW) == "cpu"
    assert resolve_partition(job(gpus_per_node=1), Settings(), VIEW) == "a100"
    assert resolve_partition(job(npus_per_node=1), Settings(), VIEW) == "ascend"
    assert resolve_partition(job(gpus_per_node=1), Settings(default_partition={"gpu": "x"}), VIEW) == "x"


def test_all_good():
    assert failures(job(gpus_per_node=8, cpus_per_task=4, time="2-00:00:00")) == []


def test_each_failure_names_the_fix():
    assert failures(job(partition="gpu80")) == ["partition 'gpu80' not found; partitions: a100, ascend, cpu, maint"]
    assert "partition 'maint' is DOWN" in failures(job(partition="maint"))[0]
    assert failures(job(partition="cpu", gpus_per_node=1))[0].startswith("partition 'cpu' has no GPUs; gpu partitions: a100")
    assert "16 gpus per node requested but nodes of 'a100' have at most 8" in failures(job(gpus_per_node=16))[0]
    assert "2 nodes with 8 gpus requested but only 1 node(s)" in failures(job(gpus_per_node=8, nodes=2))[0]
    assert "3 nodes requested but partition 'a100' has 2" in failures(job(gpus_per_node=1, nodes=3))[0]
    assert "exceeds the MaxTime 1-00:00:00 of partition 'cpu'" in failures(job(time="2-00:00:00"))[0]
    assert "CPUs per node needed" in failures(job(gpus_per_node=8, cpus_per_task=8))[0]


def test_npu_env_check(tmp_path):
    venv = tmp_path / "venv"
    (venv / "lib/python3.10/site-packages/torch").mkdir(parents=True)
    j = Job(name="t", train={"model": "m", "dataset": "d"}, resources={"npus_per_node": 2}, env={"venv": str(venv)})
    check = npu_env_check(j, tmp_path)
    assert not check.ok and "has no torch_npu: install hpcft[npu]" in check.message and str(venv) in check.message
    (venv / "lib/python3.10/site-packages/torch_npu").mkdir()
    assert npu_env_check(j, tmp_path).ok
    assert npu_env_check(Job(name="t", script="x.py", resources={"npus_per_node": 1}), tmp_path) is None
    missing = Job(name="t", train={"model": "m", "dataset": "d"}, resources={"npus_per_node": 1},
                  env={"conda": "no-such-env"})
    assert npu_env_check(missing, tmp_path).ok  # cannot see it from here: the node checks again


def out_check(output_dir, base):
    return one(checks.output_dir, Job(name="t", script="x.py", output_dir=output_dir), base)


def test_output_dir_that_cannot_be_created(tmp_path):
    (tmp_path / "file").write_text("")
    assert out_check(None, tmp_path) is None  # the default lives in the run folder
    for given, message in [
        ("/proc/x", "/proc/x: under /proc, a virtual filesystem; choose a folder on a shared filesystem"),
        ("/sys/out", "/sys/out: under /sys, a virtual filesystem; choose a folder on a shared filesystem"),
        ("/dev/shm/out", "/dev/shm/out: under /dev, a virtual filesystem; choose a folder on a shared filesystem"),
        ("file/out", f"{tmp_path}/file/out: cannot be created: {tmp_path}/file is not a directory"),
        ("file", f"{tmp_path}/file: exists and is not a directory"),
        ("~no-such-user-hpcft/out", "~no-such-user-hpcft/out: cannot expand '~no-such-user-hpcft': no such user"),
    ]:
        check = out_check(given, tmp_path)
        assert (check.name, check.ok, check.message) == ("output_dir", False, message), given
    assert out_check("new/out", tmp_path) == Check("output_dir", True, f"{tmp_path}/new/out (will be created)")
    assert not (tmp_path / "new").exists()  # a dry run creates nothing


def test_output_dir_through_a_symlink_into_proc(tmp_path):
    (tmp_path / "link").symlink_to("/proc/self")
    check = out_check("link/out", tmp_path)
    assert not check.ok
    assert check.message.endswith("under /proc, a virtual filesystem; choose a folder on a shared filesystem")


def test_output_dir_under_a_read_only_parent(tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:  # root writes anywhere: then fake what access(2) says for another user
        ro.chmod(0o555)
    else:
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == ro else real(p, mode))
    try:
        check = out_check(str(ro / "a" / "b"), tmp_path)
    finally:
        ro.chmod(0o755)
    assert check == Check("output_dir", False, f"{ro}/a/b: cannot be created: {ro} is not writable by you")


# --------------------------------------------------------------------------- the rules and their runner

def test_rules_run_in_the_order_hpcft_check_prints():
    j = Job(name="t", script="x.py", output_dir="/proc/out", resources={"gpus_per_node": 16, "nodes": 3,
                                                                         "time": "3-00:00:00"})
    p = Preflight(j, Settings(), Path("."), "slurm", VIEW, "a100", check_assets=False)
    assert [c.name for c in rules.run(p)] == ["partition", "nodes", "gres", "time", "output_dir"]
    assert [c.name for c in rules.run(p, [checks.time_limit, checks.partition])] == ["time", "partition"]
    local = Preflight(j, Settings(), Path("."), "local", None, None, check_assets=False)
    assert [c.line() for c in rules.run(local)][0] == "✗ executor: the local executor runs one node; use executor: slurm"


def test_one_environment_lookup_for_torch_npu_and_trackers(tmp_path):
    venv = tmp_path / "venv"
    site = venv / "lib/python3.10/site-packages"
    (site / "torch_npu").mkdir(parents=True)
    (site / "swanlab.py").write_text("")
    env = checks.job_env(Job(name="t", script="x.py", env={"venv": "venv"}), tmp_path)
    assert (env.prefix, env.label, env.visible) == (venv, "venv venv", True)
    assert env.has("torch_npu") and env.has("swanlab") and not env.has("tensorboard")
    assert env.python() == f"{venv}/bin/python"
    missing = checks.job_env(Job(name="t", script="x.py", env={"conda": "no-such-env-hpcft"}), tmp_path)
    assert not missing.visible and missing.label == "conda env no-such-env-hpcft"


# --------------------------------------------------------------------------- asking Slurm early

def test_live_cluster_asks_slurm_side_by_side_and_raises_where_asked(monkeypatch):
    import threading
    import time

    from hpcft.cluster import slurm
    from hpcft.core.errors import SlurmError
    from hpcft.preflight.live import Background, LiveCluster

    started = []

    def slow(value):
        def call():
            started.append(threading.current_thread() is not threading.main_thread())
            time.sleep(0.3)
            return value
        return call

    monkeypatch.setattr(slurm, "available", slow(True))
    monkeypatch.setattr(slurm, "partitions", slow(VIEW.partitions))
    monkeypatch.setattr(slurm, "nodes", slow(VIEW.nodes))
    begin = time.perf_counter()
    cluster = LiveCluster()
    assert cluster.available() and cluster.view() == VIEW
    assert time.perf_counter() - begin < 0.6 and started == [True, True, True]  # three calls, one wait

    def down():
        raise SlurmError("'scontrol' not found")

    failing = Background(down)
    with pytest.raises(SlurmError, match="not found"):  # in the caller's thread, when the answer is needed
        failing.result()


def test_remote_code_reads_no_script_past_its_limit_and_says_so(tmp_path):
    """A model's *.py is hashed for the remote-code line; a sparse 1 TiB one, or a FIFO, is named
    with why it was not read instead of hanging `hpcft check` (issue 26, finding 7)."""
    from hpcft.preflight.remote_code import model_code

    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    with open(model / "modeling_x.py", "wb") as fh:
        fh.truncate(1 << 40)
    os.mkfifo(model / "tokenization_x.py")
    code = model_code(model)
    assert code.needed and code.files == []
    assert code.listing() == "modeling_x.py (is larger than 16 MiB: not read), tokenization_x.py (is not a regular " \
                             "file: not read)"


def test_trusted_code_checks_nothing_when_unset_nor_a_metric_that_is_a_local_path(tmp_path):
    """trusted_code pins staged code; a metric file the job names by path is the user's own."""
    (tmp_path / "my_metric.py").write_text("import evaluate\n")
    j = Job.model_validate({"name": "t", "train": {"model": "bert-base-uncased", "dataset": "glue/mrpc",
                                                   "metric": "./my_metric.py"}})
    assert list(checks.trusted_code(j, Settings(), tmp_path)) == []
    assert list(checks.trusted_code(j, Settings(trusted_code={}), tmp_path)) == []
    staged = Job.model_validate({"name": "t", "train": {"model": "bert-base-uncased", "dataset": "glue/mrpc",
                                                        "metric": "glue"}})
    # not staged: the staged check says so
    assert list(checks.trusted_code(staged, Settings(trusted_code={}), tmp_path)) == []
