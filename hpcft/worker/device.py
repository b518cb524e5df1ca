"""Device, precision and threads for the worker.

The device kind comes from the launch spec (``gpu``/``npu``/``cpu``), precision from what
that device supports; ranks are :mod:`hpcft.worker.taskenv`'s. torch is imported inside the
functions that need it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from hpcft.worker.errors import DeviceError


def dist_backend(kind: str) -> str:
    """torch.distributed backend for a device kind: nccl on GPUs, hccl on Ascend NPUs, gloo on CPU."""
    return {"cuda": "nccl", "gpu": "nccl", "npu": "hccl"}.get(kind, "gloo")


def ds_accelerator(kind: str) -> str:
    """DeepSpeed's accelerator name (``DS_ACCELERATOR``) for a device kind."""
    return {"cuda": "cuda", "gpu": "cuda", "npu": "npu"}.get(kind, "cpu")


def kind_for(requested: str) -> str:
    """The device kind this task uses: the one the job asked for. An NPU job imports torch_npu
    here, first thing: a missing torch_npu stops the job in about a second, naming the env."""
    if requested == "npu":
        require_npu()
    return requested


def cpu_threads() -> int:
    """Threads for torch: Slurm's allocation, else the CPUs this process may use."""
    for name in ("SLURM_CPUS_PER_TASK", "OMP_NUM_THREADS"):
        v = os.environ.get(name, "")
        if v.isdigit() and int(v) > 0:
            return int(v)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def import_npu() -> None:
    """torch_npu must be imported before any model is built; say how to get it if missing."""
    try:
        import torch_npu  # noqa: F401
    except ImportError as exc:
        import sys

        env = os.environ.get("CONDA_DEFAULT_ENV") or os.environ.get("VIRTUAL_ENV") or sys.prefix
        raise DeviceError(f"this is an NPU job but torch_npu cannot be imported in {env} "
                          f"(python {sys.executable}: {exc}); "
                          "install it there: pip install 'hpcft[npu]' (matching your CANN version), "
                          "and check that the cluster's CANN set_env.sh is sourced (cann_set_env)") from None


def require_npu() -> None:
    """torch_npu imported (first thing in an NPU job) and at least one NPU visible."""
    import_npu()
    import torch

    if not torch.npu.is_available():  # type: ignore[attr-defined]
        raise DeviceError("torch_npu is installed but no NPU is visible "
                          f"(ASCEND_RT_VISIBLE_DEVICES={os.environ.get('ASCEND_RT_VISIBLE_DEVICES', 'unset')}); "
                          "check the job's --gres=npu and that no stale process holds the devices (npu-smi info)")


@dataclass
class DeviceInfo:
    kind: str            # cuda | npu | cpu
    name: str            # e.g. "NVIDIA H100", "Ascend910B", "cpu (2 threads)"
    precision: str       # fp32 | bf16 | fp16
    threads: int

    def as_dict(self) -> dict:
        return {"kind": self.kind, "name": self.name, "precision": self.precision, "threads": self.threads}


def detect(requested_kind: str, precision: str = "auto") -> DeviceInfo:
    """The device this task uses and the precision to train in.

    ``requested_kind`` is the job's device (gpu/npu/cpu, from launch.json). Precision
    ``auto``: bf16 where the device supports it, else fp16 on accelerators, fp32 on CPU.
    """
    import torch

    threads = cpu_threads()
    torch.set_num_threads(threads)
    if requested_kind == "npu":
        require_npu()
        name = torch.npu.get_device_name(0)  # type: ignore[attr-defined]
        bf16_ok = _npu_bf16(torch, name)
        return DeviceInfo("npu", name, _choose(precision, bf16_ok, "npu"), threads)
    if requested_kind == "gpu" or (requested_kind == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise DeviceError("this is a GPU job but torch sees no CUDA device "
                              f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}, "
                              f"torch {torch.__version__}, CUDA build {torch.version.cuda}); "
                              "install a CUDA build of torch in the job's environment")
        name = torch.cuda.get_device_name(0)
        return DeviceInfo("cuda", name, _choose(precision, torch.cuda.is_bf16_supported(), "cuda"), threads)
    return DeviceInfo("cpu", f"cpu ({threads} threads)", _choose(precision, True, "cpu"), threads)


def _npu_bf16(torch, name: str) -> bool:
    checker = getattr(getattr(torch, "npu", None), "is_bf16_supported", None)
    if callable(checker):
        try:
            return bool(checker())
        except (RuntimeError, AttributeError, TypeError):
            return "910B" in name or "910_9" in name  # older torch_npu: decide from the chip name
    return "910B" in name or "910_9" in name


def _choose(precision: str, bf16_ok: bool, kind: str) -> str:
    if precision != "auto":
        if precision == "fp16" and kind == "cpu":
            raise DeviceError("precision fp16 needs a GPU or NPU; on CPU use fp32 or bf16")
        if precision == "bf16" and not bf16_ok:
            raise DeviceError(f"precision bf16 is not supported on this {kind}; use fp16 or auto")
        return precision
    if kind == "cpu":
        return "fp32"
    return "bf16" if bf16_ok else "fp16"


def peak_memory_mb(kind: str) -> dict:
    """Peak host RSS and, on accelerators, peak device memory of this process."""
    import resource

    out = {"host_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    try:
        import torch

        if kind == "cuda" and torch.cuda.is_available():
            out["device_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        elif kind == "npu":
            out["device_mb"] = round(torch.npu.max_memory_allocated() / 2**20, 1)  # type: ignore[attr-defined]
    except (ImportError, RuntimeError, AttributeError) as exc:  # informational: say why it is missing
        out["device_mb_error"] = f"{type(exc).__name__}: {exc}"
    return out


def free_memory_gib(kind: str, ranks_on_node: int = 1) -> Optional[float]:
    """GiB this rank can still use on its device: the accelerator's free memory (``mem_get_info``),
    or on the CPU the host's available memory within the job's cgroup limit, shared by the node's
    ranks. None when it cannot be told."""
    try:
        import torch

        if kind == "cuda" and torch.cuda.is_available():
            return torch.cuda.mem_get_info(torch.cuda.current_device())[0] / 2**30
        if kind == "npu":
            return torch.npu.mem_get_info()[0] / 2**30  # type: ignore[attr-defined]
    except (ImportError, RuntimeError, AttributeError):   # the caller says the memory is unknown
        return None
    if kind != "cpu":
        return None
    free = [x for x in (_meminfo_available(), _cgroup_room()) if x is not None]
    return min(free) / 2**30 / max(1, ranks_on_node) if free else None


def _meminfo_available() -> Optional[int]:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_room() -> Optional[int]:
    """Bytes left under this process's cgroup v2 memory limit (Slurm's task/cgroup), if it has one."""
    try:
        rel = next(x.split("::", 1)[1] for x in Path("/proc/self/cgroup").read_text().splitlines()
                   if x.startswith("0::"))
        folder = Path("/sys/fs/cgroup") / rel.lstrip("/")
        while True:
            limit = (folder / "memory.max").read_text().strip() if (folder / "memory.max").is_file() else "max"
            if limit != "max":
                return max(0, int(limit) - int((folder / "memory.current").read_text()))
            if folder == Path("/sys/fs/cgroup") or folder.parent == folder:
                return None
            folder = folder.parent
    except (OSError, ValueError, StopIteration):
        return None
