"""The one place that reads a task's rank, world size, node and rendezvous, and this node's
Ascend devices. Launchers and tasks only call it.

A task learns who it is from Slurm's per-task variables (``SLURM_PROCID``/``SLURM_LOCALID``/
``SLURM_NTASKS``, expanded inside the task by srun, never in the batch shell), else from
submitit's local executor (``SUBMITIT_LOCAL_*``), else from torchrun-style variables, else it
is rank 0 of 1. The rendezvous is the job's first node and a port derived from the job id, so
two jobs on one node never collide. Everything here is computed in Python; the sbatch script
prints none of it.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

from hpcft.core.slurmfmt import expand_hostlist, node_gres_idx

PORT_BASE, PORT_SPAN = 20000, 10000


@dataclass(frozen=True)
class TaskEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    job_id: str = "local"
    node: str = ""
    nodes: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = PORT_BASE

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def dist_env(self) -> dict[str, str]:
        """torch.distributed's ``env://`` variables for this task."""
        return {"RANK": str(self.rank), "LOCAL_RANK": str(self.local_rank), "WORLD_SIZE": str(self.world_size),
                "MASTER_ADDR": self.master_addr, "MASTER_PORT": str(self.master_port)}


def master_port(job_id: str) -> int:
    digits = "".join(ch for ch in str(job_id).split("_")[0] if ch.isdigit())
    return PORT_BASE + int(digits or 0) % PORT_SPAN


def _int(env: Mapping[str, str], *names: str, default: int) -> int:
    for name in names:
        value = env.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                continue
    return default


def current(env: Optional[Mapping[str, str]] = None, default_world: int = 1) -> TaskEnv:
    """This task's identity. ``default_world`` (the launch spec's) applies when no launcher says."""
    env = os.environ if env is None else env
    job_id = env.get("SLURM_JOB_ID") or env.get("SUBMITIT_LOCAL_JOB_ID") or "local"
    hosts = expand_hostlist(env.get("SLURM_JOB_NODELIST", "")) if env.get("SLURM_JOB_ID") else []
    return TaskEnv(
        rank=_int(env, "SLURM_PROCID", "SUBMITIT_LOCAL_GLOBALID", "RANK", default=0),
        local_rank=_int(env, "SLURM_LOCALID", "SUBMITIT_LOCAL_LOCALID", "LOCAL_RANK", default=0),
        world_size=_int(env, "SLURM_NTASKS", "SUBMITIT_LOCAL_NTASKS", "WORLD_SIZE", default=default_world),
        job_id=job_id,
        node=env.get("SLURMD_NODENAME") or os.uname().nodename,
        nodes=_int(env, "SLURM_NNODES", "SLURM_JOB_NUM_NODES", default=1),
        # an explicitly exported rendezvous (e.g. the job's env.vars) wins over the derived one
        master_addr=env.get("MASTER_ADDR") or (hosts[0] if hosts else "127.0.0.1"),
        master_port=_int(env, "MASTER_PORT", default=master_port(job_id)),
    )


# ----------------------------------------------------------------- this job in Slurm; Ascend devices

def scontrol_job(job_id: str) -> str:
    """``scontrol show job -d JOB_ID`` as text, asked from inside the job (empty when Slurm's
    tools are missing or do not answer in 30 s). The Ascend device lookup below and the run's
    queue wait (:func:`hpcft.worker.telemetry.queue_wait`) read it."""
    try:
        return subprocess.run(["scontrol", "show", "job", "-d", job_id], capture_output=True, text=True,
                              timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def ascend_devices(env: Optional[Mapping[str, str]] = None,
                   scontrol: Callable[[str], str] = scontrol_job) -> Optional[str]:
    """``ASCEND_RT_VISIBLE_DEVICES`` for the node this task runs on, or None to keep the
    environment's. Slurm's ``--gres=npu`` sets no device variable, so: what an NPU plugin
    exported (PKU slurm-atlas-plugin: ``ASCEND_VISIBLE_DEVICES``, ``SLURM_JOB_NPUS``), else this
    node's ``IDX`` list from ``scontrol show job -d`` (``GRES=npu:2(IDX:0-1)``)."""
    env = os.environ if env is None else env
    for name in ("ASCEND_RT_VISIBLE_DEVICES", "ASCEND_VISIBLE_DEVICES", "SLURM_JOB_NPUS"):
        if env.get(name):
            return env[name]
    job = env.get("SLURM_JOB_ID")
    if not job:
        return None
    idx = node_gres_idx(scontrol(job), env.get("SLURMD_NODENAME") or None, "npu")
    return ",".join(map(str, idx)) if idx else None


# CANN's own default for HCCL_EXEC_TIMEOUT (s): an operation's wait for the other ranks. A lower
# value only cuts long first steps short (a big model's first all-gather), so none is ever used
HCCL_EXEC_TIMEOUT_MIN = 1836


def npu_env(env: Optional[Mapping[str, str]] = None,
            scontrol: Callable[[str], str] = scontrol_job,
            route: Optional[Callable[[str], Optional[tuple[str, str]]]] = None) -> dict[str, str]:
    """What an NPU task sets before torch_npu is imported: its devices and HCCL defaults
    (the cluster config's ``hccl_env`` values, exported by the script, take precedence, except
    that ``HCCL_EXEC_TIMEOUT`` is never below CANN's 1836 s). A multi-node job also gets
    ``HCCL_IF_IP``/``HCCL_SOCKET_IFNAME`` (:func:`hccl_network`) unless the cluster sets them."""
    env = os.environ if env is None else env
    out = {"DS_ACCELERATOR": "npu"}
    devices = ascend_devices(env, scontrol)
    if devices:
        out["ASCEND_RT_VISIBLE_DEVICES"] = devices
    out["HCCL_CONNECT_TIMEOUT"] = env.get("HCCL_CONNECT_TIMEOUT") or "1200"  # first connect on a busy cluster is slow
    given = env.get("HCCL_EXEC_TIMEOUT") or ""
    out["HCCL_EXEC_TIMEOUT"] = given if given.isdigit() and (int(given) == 0 or int(given) >= HCCL_EXEC_TIMEOUT_MIN) \
        else str(HCCL_EXEC_TIMEOUT_MIN)   # 0: no limit, as CANN reads it
    if _int(env, "SLURM_NNODES", "SLURM_JOB_NUM_NODES", default=1) > 1:
        out.update(hccl_network(env, route or local_route))
    return out


def hccl_network(env: Mapping[str, str], route: Callable[[str], Optional[tuple[str, str]]]) -> dict[str, str]:
    """HCCL's host network for a multi-node job: what the cluster config's ``hccl_env`` says
    (``HCCL_SOCKET_IFNAME``, ``HCCL_IF_IP``), else this node's address and interface on the way to
    the job's first node (the rendezvous), as the ranks reach each other. Without either HCCL
    takes the first interface it finds, often a docker or management one."""
    if env.get("HCCL_IF_IP") or env.get("HCCL_SOCKET_IFNAME"):
        return {}
    master = current(env).master_addr
    found = route(master) if master not in ("127.0.0.1", "localhost") else None
    if found is None:
        return {}
    ip, ifname = found
    return {"HCCL_IF_IP": ip, **({"HCCL_SOCKET_IFNAME": ifname} if ifname else {})}


def local_route(host: str) -> Optional[tuple[str, str]]:
    """This node's (address, interface) for reaching ``host``: the kernel's route choice (a UDP
    socket's connect sends nothing); None for a loopback answer or no route."""
    import socket

    try:
        addr = socket.gethostbyname(host)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((addr, 9))
            ip = s.getsockname()[0]
    except OSError:
        return None
    if ip.startswith("127."):
        return None
    return ip, _interface_of(ip)


def _interface_of(ip: str) -> str:
    """The name of the interface holding IPv4 ``ip`` (``""`` when none is found)."""
    import fcntl
    import socket
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                raw = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))  # SIOCGIFADDR
            except OSError:
                continue
            if socket.inet_ntoa(raw[20:24]) == ip:
                return name
    return ""


def device_env(device: str, env: Optional[Mapping[str, str]] = None,
               scontrol: Callable[[str], str] = scontrol_job) -> dict[str, str]:
    """What a helper job on a run's devices (``hpcft serve``, ``eval``, ``predict``) sets before it
    imports torch_npu or vLLM, as training does: on an NPU its own ``ASCEND_RT_VISIBLE_DEVICES``
    from Slurm's allocation (vllm-ascend picks its devices by it) and the HCCL defaults; nothing
    on a GPU (Slurm sets ``CUDA_VISIBLE_DEVICES``) or a CPU."""
    return npu_env(env, scontrol) if device == "npu" else {}


def apply_device_env(device: str) -> dict[str, str]:
    """:func:`device_env` applied to this process's environment; returns what it set."""
    found = device_env(device)
    os.environ.update(found)
    return found
