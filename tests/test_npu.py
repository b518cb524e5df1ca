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
                     "HCCL_CONNECT_TIMEOUT": "600", "HCCL_EXEC_TIMEOUT": "1800"}  # the cluster's hccl_env wins
    assert npu_env({"SLURM_JOB_ID": "42", "SLURMD_NODENAME": "npu01"}, scontrol)["ASCEND_RT_VISIBLE_DEVICES"] \
        == "0,1,2,3"
    # an NPU plugin's variables (PKU slurm-atlas-plugin) come first
    assert npu_env({"SLURM_JOB_ID": "42", "ASCEND_VISIBLE_DEVICES": "2,3"}, scontrol)["ASCEND_RT_VISIBLE_DEVICES"] \
        == "2,3"
    assert npu_env({"SLURM_JOB_ID": "42", "SLURM_JOB_NPUS": "5"}, scontrol)["ASCEND_RT_VISIBLE_DEVICES"] == "5"
    # scontrol unreachable, or not under Slurm: keep what the environment has
    assert "ASCEND_RT_VISIBLE_DEVICES" not in npu_env({"SLURM_JOB_ID": "43", "SLURMD_NODENAME": "npu02"}, scontrol)
    assert "ASCEND_RT_VISIBLE_DEVICES" not in npu_env({}, scontrol)


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
