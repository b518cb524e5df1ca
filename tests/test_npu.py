"""Ascend NPU jobs without an NPU: each node's device list, the HCCL environment, and the
worker's NPU path with torch_npu replaced by a test double at the import boundary only
(a fake ``torch_npu`` package on PYTHONPATH; everything else is the real worker)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

from devtools.runs import ROOT, make_run
from hpcft.core.progress_log import last_progress

SCONTROL_2_NODES = """\
JobId=42 JobName=cola-npu
   UserId=alice(1000) GroupId=alice(1000) MCS_label=N/A
   JobState=RUNNING Reason=None Dependency=(null)
   NodeList=npu[01-02]
   BatchHost=npu01
   NumNodes=2 NumCPUs=16 NumTasks=8 CPUs/Task=2 ReqB:S:C:T=0:0:*:*
   TRES=cpu=16,mem=64G,node=2,billing=16,gres/npu=8
     Nodes=npu01 CPU_IDs=0-7 Mem=32768 GRES=npu:4(IDX:0-3)
     Nodes=npu02 CPU_IDs=8-15 Mem=32768 GRES=npu:910b:4(IDX:4-7)
   MinCPUsNode=2 MinMemoryNode=32G MinTmpDiskNode=0
"""


def test_each_node_reads_its_own_devices():
    from hpcft.core.slurmfmt import node_gres_idx

    assert node_gres_idx(SCONTROL_2_NODES, "npu01") == [0, 1, 2, 3]
    assert node_gres_idx(SCONTROL_2_NODES, "npu02") == [4, 5, 6, 7]
    assert node_gres_idx(SCONTROL_2_NODES, "npu03") is None
    grouped = "     Nodes=cn[1-2] CPU_IDs=0-1 Mem=0 GRES=gpu:1(IDX:0),npu:2(IDX:0,2)\n"
    assert node_gres_idx(grouped, "cn2") == [0, 2]
    assert node_gres_idx(grouped, "cn2", "gpu") == [0]


def test_each_task_sets_its_own_nodes_npus_in_python():
    """--gres=npu sets no device variable; the batch script derives nothing: each task computes
    ASCEND_RT_VISIBLE_DEVICES for its own node before torch_npu is imported."""
    from hpcft.worker.taskenv import npu_env

    def scontrol(job):
        return SCONTROL_2_NODES if job == "42" else ""

    node2 = npu_env({"SLURM_JOB_ID": "42", "SLURMD_NODENAME": "npu02", "HCCL_CONNECT_TIMEOUT": "600"}, scontrol)
    assert node2 == {"DS_ACCELERATOR": "npu", "ASCEND_RT_VISIBLE_DEVICES": "4,5,6,7",
                     "HCCL_CONNECT_TIMEOUT": "600", "HCCL_EXEC_TIMEOUT": "1836"}  # the cluster's hccl_env wins
    assert npu_env({"SLURM_JOB_ID": "42", "SLURMD_NODENAME": "npu01"}, scontrol)["ASCEND_RT_VISIBLE_DEVICES"] \
        == "0,1,2,3"
    # an NPU plugin's variables (PKU slurm-atlas-plugin) come first
    assert npu_env({"SLURM_JOB_ID": "42", "ASCEND_VISIBLE_DEVICES": "2,3"}, scontrol)["ASCEND_RT_VISIBLE_DEVICES"] \
        == "2,3"
    assert npu_env({"SLURM_JOB_ID": "42", "SLURM_JOB_NPUS": "5"}, scontrol)["ASCEND_RT_VISIBLE_DEVICES"] == "5"
    # scontrol unreachable, or not under Slurm: keep what the environment has
    assert "ASCEND_RT_VISIBLE_DEVICES" not in npu_env({"SLURM_JOB_ID": "43", "SLURMD_NODENAME": "npu02"}, scontrol)
    assert "ASCEND_RT_VISIBLE_DEVICES" not in npu_env({}, scontrol)


def test_hccl_exec_timeout_is_never_below_canns_default():
    """CANN waits 1836 s by default; the shipped cluster config said 1200, which cut a big
    model's first collective short. Lower values are raised; larger ones and 0 (no limit) kept."""
    from hpcft.core.config import Settings
    from hpcft.worker.taskenv import npu_env

    assert Settings().hccl_env["HCCL_EXEC_TIMEOUT"] == "1836"
    seen = {given: npu_env({"HCCL_EXEC_TIMEOUT": given} if given else {}, lambda job: "")["HCCL_EXEC_TIMEOUT"]
            for given in ("", "1200", "1836", "3600", "0", "soon")}
    assert seen == {"": "1836", "1200": "1836", "1836": "1836", "3600": "3600", "0": "0", "soon": "1836"}


def test_multi_node_npu_jobs_get_hccls_host_network():
    """HCCL otherwise takes the first interface it finds (often docker0 or a management port):
    a multi-node task sets HCCL_IF_IP/HCCL_SOCKET_IFNAME to its own address on the way to the
    job's first node, unless the cluster config's hccl_env names them."""
    from hpcft.worker.taskenv import local_route, npu_env

    asked = []

    def route(host):
        asked.append(host)
        return ("10.77.0.12", "ib0")

    two = {"SLURM_JOB_ID": "42", "SLURMD_NODENAME": "npu02", "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "npu[01-02]"}
    env = npu_env(two, lambda job: SCONTROL_2_NODES, route)
    assert (env["HCCL_IF_IP"], env["HCCL_SOCKET_IFNAME"], asked) == ("10.77.0.12", "ib0", ["npu01"])
    for given in ({"HCCL_SOCKET_IFNAME": "eth"}, {"HCCL_IF_IP": "10.0.0.5"}):   # the cluster's word
        env = npu_env({**two, **given}, lambda job: SCONTROL_2_NODES, route)
        assert {k: env.get(k) for k in ("HCCL_IF_IP", "HCCL_SOCKET_IFNAME")} == \
            {"HCCL_IF_IP": None, "HCCL_SOCKET_IFNAME": None}  # the script exports the cluster's own values
    one = npu_env({**two, "SLURM_NNODES": "1"}, lambda job: SCONTROL_2_NODES, route)
    assert "HCCL_IF_IP" not in one and len(asked) == 1   # one node: HCCL's loopback is fine
    assert npu_env({**two}, lambda job: "", lambda host: None).get("HCCL_IF_IP") is None  # no route: HCCL's own pick
    ip, ifname = local_route("127.0.0.1") or ("loopback", "")
    assert ip == "loopback"                                # a loopback answer is never exported


def test_helper_jobs_set_their_own_npus_before_torch_npu(tmp_path):
    """hpcft eval / predict on an NPU job: ASCEND_RT_VISIBLE_DEVICES from Slurm's allocation (here an
    NPU plugin's SLURM_JOB_NPUS) is set before torch_npu is imported, as training's tasks do; a
    GPU or CPU helper job changes nothing."""
    from hpcft.worker.taskenv import device_env

    assert device_env("gpu", {"SLURM_JOB_NPUS": "3"}) == {} and device_env("cpu", {}) == {}
    assert device_env("npu", {"SLURM_JOB_NPUS": "3"})["ASCEND_RT_VISIBLE_DEVICES"] == "3"
    pkg = tmp_path / "double" / "torch_npu"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent("""
        import json, os
        with open(os.environ["FAKE_NPU_RECORD"], "a") as fh:
            fh.write(json.dumps({k: os.environ.get(k) for k in ("ASCEND_RT_VISIBLE_DEVICES", "HCCL_EXEC_TIMEOUT")}) + "\\n")
        raise ImportError("the test double stops here")
    """))
    record = tmp_path / "record.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "ASCEND", "HCCL"))}
    env.update(PYTHONPATH=f"{tmp_path / 'double'}:{ROOT}", SLURM_JOB_NPUS="5,6", FAKE_NPU_RECORD=str(record),
               HCCL_EXEC_TIMEOUT="1200")
    model = tmp_path / "model"
    model.mkdir()
    runs = {
        "after_training.evaluate": ["--model", str(model), "--tasks", "mmlu_anatomy", "--out", str(tmp_path / "eval"),
                     "--device", "npu", "--backend", "hf"],
        "after_training.predict": ["hello", "--model", str(model), "--device", "npu"],
    }
    for module, argv in runs.items():
        proc = subprocess.run([sys.executable, "-m", f"hpcft.worker.{module}", *argv], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, (module, proc.stderr[-2000:])
        assert "this is an NPU job but torch_npu cannot be imported" in proc.stderr, (module, proc.stderr[-2000:])
    seen = [json.loads(line) for line in record.read_text().splitlines()]
    assert seen == [{"ASCEND_RT_VISIBLE_DEVICES": "5,6", "HCCL_EXEC_TIMEOUT": "1836"}] * 2, seen


def _npu_run(tmp_path, hpcft_home, fake: str | None):
    job = {"name": "cola-npu", "executor": "local",
           "train": {"model": "bert-base-cased", "dataset": "glue/cola", "epochs": 1},
           "resources": {"npus_per_node": 2}}
    paths = make_run(job)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "ASCEND", "HCCL", "DS_"))}
    pythonpath = [str(ROOT)]
    if fake is not None:
        pkg = tmp_path / "double" / "torch_npu"
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text(textwrap.dedent(fake))
        pythonpath.insert(0, str(tmp_path / "double"))
    env.update(PYTHONPATH=":".join(pythonpath), CONDA_DEFAULT_ENV="ascend-py310", ASCEND_RT_VISIBLE_DEVICES="0,1",
               FAKE_NPU_RECORD=str(tmp_path / "record.json"), HF_ENDPOINT="http://127.0.0.1:9")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "hpcft.worker", str(paths.dir)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    return paths, proc, time.monotonic() - t0


FAKE_TORCH_NPU = """
    import json, os, sys, types
    import torch
    # what the real torch_npu sees when the worker imports it
    with open(os.environ["FAKE_NPU_RECORD"], "w") as fh:
        json.dump({"heavy": sorted(m for m in ("transformers", "datasets", "deepspeed") if m in sys.modules),
                   "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR"),
                   "HCCL_CONNECT_TIMEOUT": os.environ.get("HCCL_CONNECT_TIMEOUT")}, fh)
    torch.npu = types.SimpleNamespace(is_available=lambda: False, device_count=lambda: 0)
"""


def test_worker_imports_torch_npu_first_and_stops_when_no_npu_is_visible(tmp_path, hpcft_home):
    paths, proc, _ = _npu_run(tmp_path, hpcft_home, FAKE_TORCH_NPU)
    assert proc.returncode != 0
    seen = json.loads((tmp_path / "record.json").read_text())
    assert seen == {"heavy": [], "DS_ACCELERATOR": "npu", "HCCL_CONNECT_TIMEOUT": "1200"}, seen
    assert "torch_npu is installed but no NPU is visible (ASCEND_RT_VISIBLE_DEVICES=0,1)" in proc.stderr
    assert "hpcft: model " not in proc.stdout  # stopped before any asset or model is touched


def test_worker_without_torch_npu_stops_at_once_naming_env_and_extra(tmp_path, hpcft_home):
    paths, proc, _ = _npu_run(tmp_path, hpcft_home, None)
    assert proc.returncode != 0
    assert "hpcft: error: this is an NPU job but torch_npu cannot be imported in ascend-py310" in proc.stderr
    assert "pip install 'hpcft[npu]'" in proc.stderr
    last = last_progress(paths.progress)
    assert last["event"] == "failed" and "torch_npu" in last["error"]
