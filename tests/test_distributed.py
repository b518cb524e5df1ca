"""Multi-rank launch without a cluster: the rendered script's rendezvous and escaping, the
per-task rank variables, per-rank logs, the ops cache, and the stop-at-signal agreement
between real gloo ranks. (The same on the real 2-node cluster: tests/test_multinode.py.)"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.test_render import _fixed_cache, check_golden, render  # noqa: F401

pytestmark = pytest.mark.worker  # also run on the floor lane (.venv-floor)

ROOT = Path(__file__).resolve().parent.parent

MULTINODE_GPU = {
    "name": "mrpc-2x2",
    "train": {"model": "bert-base-uncased", "dataset": "glue/mrpc", "deepspeed": 2},
    "resources": {"partition": "gpu", "nodes": 2, "gpus_per_node": 2, "time": "01:00:00"},
}


@pytest.fixture
def multinode_script(tmp_path) -> str:
    path = tmp_path / "mrpc-2x2.yaml"
    path.write_text(yaml.safe_dump(MULTINODE_GPU))
    return render(path).replace(str(tmp_path), "<jobdir>")


def test_multinode_gpu_golden(multinode_script):
    check_golden("multinode-gpu-2x2.sbatch", multinode_script)


def test_one_task_per_device_through_srun(multinode_script):
    text = multinode_script
    assert "#SBATCH --nodes=2" in text and "#SBATCH --ntasks-per-node=2" in text
    assert "#SBATCH --gres=gpu:2" in text
    assert re.search(r"^srun --unbuffered --kill-on-bad-exit=1 .*submitit", text, re.MULTILINE)
    assert "# --- 4 ranks: each task sets its own RANK/LOCAL_RANK/WORLD_SIZE" in text


def test_per_task_variables_are_never_expanded_in_the_batch_shell(multinode_script):
    """accelerate#2816: $SLURM_NODEID/$SLURM_PROCID expanded once in the batch shell gives every
    task rank 0. The script must not mention them at all: each task reads its own in Python."""
    code = "\n".join(ln for ln in multinode_script.splitlines() if not ln.lstrip().startswith("#"))
    for var in ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID", "RANK", "WORLD_SIZE", "MASTER_"):
        assert var not in code, var


def test_each_task_computes_its_rank_and_rendezvous_in_python():
    """The one place that reads rank variables: Slurm's per-task ids win over stale torchrun ones;
    the rendezvous is the first node and 20000 + job id % 10000 (neighbouring jobs differ)."""
    from hpcft.worker.taskenv import current

    t = current({"SLURM_JOB_ID": "4711", "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NTASKS": "4",
                 "SLURM_JOB_NODELIST": "node[1-2]", "SLURMD_NODENAME": "node2", "SLURM_NNODES": "2", "RANK": "9"})
    assert (t.rank, t.local_rank, t.world_size, t.is_main, t.nodes) == (3, 1, 4, False, 2)
    assert t.dist_env() == {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "MASTER_ADDR": "node1",
                            "MASTER_PORT": "24711"}
    ports = {j: current({"SLURM_JOB_ID": j, "SLURM_JOB_NODELIST": "n1"}).master_port for j in ("4712", "14711")}
    assert ports == {"4712": 24712, "14711": 24711}
    # an explicitly exported rendezvous (env.vars) wins
    assert current({"SLURM_JOB_ID": "1", "MASTER_PORT": "29500", "MASTER_ADDR": "x"}).dist_env()["MASTER_PORT"] \
        == "29500"
    # submitit's local executor, then torchrun-style, then one process; the launch spec's world
    assert current({"SUBMITIT_LOCAL_GLOBALID": "1", "SUBMITIT_LOCAL_NTASKS": "2"}).world_size == 2
    assert (current({"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"}).rank, current({}).world_size) == (1, 1)
    assert current({}, default_world=4).world_size == 4
    assert current({}).master_addr == "127.0.0.1"


def test_backends_per_device():
    from hpcft.worker.device import dist_backend, ds_accelerator

    assert [dist_backend(k) for k in ("cuda", "npu", "cpu")] == ["nccl", "hccl", "gloo"]
    assert [ds_accelerator(k) for k in ("gpu", "npu", "cpu")] == ["cuda", "npu", "cpu"]


def _task(code: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SUBMITIT_"))
            and k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env={**base, **env}, cwd=ROOT, timeout=120)


def test_prepare_task_gives_each_rank_its_log_and_the_ops_cache(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    code = f"""
        import os
        from hpcft.core.rundir import LaunchSpec
        from hpcft.worker.runtime import prepare_task
        spec = LaunchSpec(kind="train", run_dir={str(run)!r}, workdir=".", output_dir=".", base_dir=".",
                          tasks_per_node=2)
        prepare_task(spec)
        print("from", os.environ["RANK"], os.environ["TORCH_EXTENSIONS_DIR"])
    """
    env = {"SLURM_JOB_ID": "77", "SLURM_NTASKS": "2", "HPCFT_CACHE": str(tmp_path / "cache"),
           "HPCFT_RUNTIME": str(tmp_path / "runtime")}
    r0 = _task(code, {**env, "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}, tmp_path)
    r1 = _task(code, {**env, "SLURM_PROCID": "1", "SLURM_LOCALID": "1"}, tmp_path)
    assert r0.returncode == 0 and r1.returncode == 0, r0.stderr + r1.stderr
    assert r0.stdout.startswith("from 0 ") and r1.stdout == ""  # rank 1 writes to its own file
    rank1 = (run / "logs" / "job.77.rank1.out").read_text()
    assert "hpcft: rank 1/2 on" in rank1 and "from 1 " in rank1
    assert os.readlink(run / "logs" / "job.77.rank0.out") == "../job.77.out"
    ops = Path(r0.stdout.split()[2])
    assert ops.is_dir() and ops == tmp_path / "runtime" / "torch_extensions"  # the user's own, never the cache


def test_one_process_train_job_stays_out_of_torch_distributed(tmp_path):
    code = f"""
        import os
        from hpcft.core.rundir import LaunchSpec
        from hpcft.worker.runtime import prepare_task
        spec = LaunchSpec(kind="train", run_dir={str(tmp_path)!r}, workdir=".", output_dir=".", base_dir=".")
        prepare_task(spec)
        print(sorted(k for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT") if k in os.environ))
    """
    r = _task(code, {"SLURM_JOB_ID": "5", "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}, tmp_path)
    assert r.stdout.strip() == "[]", r.stderr
    assert not (tmp_path / "logs").exists()


def test_all_ranks_agree_to_stop_when_only_one_got_the_signal(tmp_path):
    """Two real gloo ranks; USR2 reached rank 1 only. Both must stop at the same step, and a
    rank that stops alone would hang the other in its next collective."""
    code = """
        import os, sys, torch.distributed as dist
        from hpcft.worker.collective import agree_on_stop
        dist.init_process_group("gloo")
        rank = dist.get_rank()
        decisions = [agree_on_stop(rank == 1 and step >= 3) for step in range(6)]
        print(rank, decisions, flush=True)
        dist.destroy_process_group()
    """
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2"}
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env={**base, **env, "RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT) for r in (0, 1)]
    outs = [p.communicate(timeout=120) for p in procs]
    expected = "[False, False, False, True, True, True]"
    assert outs[0][0].strip() == f"0 {expected}", outs[0]
    assert outs[1][0].strip() == f"1 {expected}", outs[1]
    from hpcft.worker.collective import agree_on_stop

    assert agree_on_stop(True) is True and agree_on_stop(False) is False  # one process: no collective


def test_peer_failures_are_recognised_only_on_multi_rank_jobs():
    from hpcft.worker.main import is_peer_failure

    echo = RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [10.77.0.12]:643. "
                        "This is typically caused by a remote worker crashing.")
    assert is_peer_failure(echo, 4)
    assert not is_peer_failure(ValueError("dataset has no column 'label'"), 4)
    assert not is_peer_failure(echo, 1)
