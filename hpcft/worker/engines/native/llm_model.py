"""Loading a staged LLM and its tokenizer: the one place every LLM task (``causal-lm``, the
preference tasks) and ``hpcft export`` get them from.

* :func:`load_tokenizer` -- the tokenizer, with a pad token (the EOS when the model has none).
* :func:`load_model` -- ``AutoModelForCausalLM`` in the given dtype. Under ZeRO-3 it is built
  inside DeepSpeed's ``zero.Init``, so each rank only ever holds its shard of the weights: the
  DeepSpeed config must exist *before* ``from_pretrained`` (transformers looks for a live
  ``HfDeepSpeedConfig``) and torch.distributed must be up. Build the task's
  ``TrainingArguments(deepspeed=...)`` first and pass it as ``args``; or set up the process group
  yourself and pass the config dict as ``ds_config`` (kept alive while it loads).
* ``trust_remote_code`` is passed only when the job says ``train.trust_remote_code: true``
  (never implied); the pre-flight (:mod:`hpcft.preflight.remote_code`) names the files that run.
* :func:`train_dtype` -- the dtype the weights are loaded in for a method on a device.
* ``quantization``/``device_map`` of :func:`load_model`: ``method: qlora``'s bitsandbytes config
  and the rank's device (:mod:`hpcft.worker.engines.native.qlora`); the model is quantized while it loads.
* :func:`rss_mb` -- this process's host RSS now and at its peak (``/proc/self/status``), which a
  task records around loading (:func:`record_load`), so a run shows what loading cost each rank.

torch and transformers are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
from pathlib import Path
from typing import Any, Iterator, Optional

from hpcft.core.atomic import atomic_write_json
from hpcft.worker.console import log

_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def load_tokenizer(model_dir: str | Path, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def train_dtype(method: str, precision: str):
    """LoRA keeps its frozen base in the training precision (bf16/fp16 on accelerators), and so
    does QLoRA for the layers bitsandbytes leaves unquantized (embeddings, norms, head); full
    fine-tuning loads fp32 master weights (mixed precision casts per op)."""
    import torch

    if method in ("lora", "qlora") and precision in ("bf16", "fp16"):
        return torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.float32


def load_model(model_dir: str | Path, *, dtype, trust_remote_code: bool = False, args: Any = None,
               ds_config: Any = None, quantization: Any = None, device_map: Any = None):
    """``AutoModelForCausalLM.from_pretrained(model_dir)`` in ``dtype``.

    ``args``: the task's TrainingArguments (or a TRL config), built before the model: under
    ZeRO-3 its ``device`` is set up first (torch.distributed with the job's backend: zero.Init
    partitions over the world), then the model is constructed inside ``zero.Init`` (each
    parameter partitioned as it is created) and the checkpoint is loaded into the shards.
    ``ds_config``: without ``args``, a DeepSpeed config dict (torch.distributed already set up).
    ``quantization``: a ``BitsAndBytesConfig`` (method: qlora), with ``device_map`` the device it
    is quantized on."""
    from transformers import AutoModelForCausalLM
    from transformers.integrations import is_deepspeed_zero3_enabled

    if args is not None and is_deepspeed_zero3_enabled():
        import deepspeed

        _ = args.device  # noqa: F841 - torch.distributed up with the job's backend (accelerate's set-up)
        # zero.Init reads the world from deepspeed.comm, which wraps the existing process group
        backend = getattr(args, "ddp_backend", None)
        deepspeed.init_distributed(**({"dist_backend": backend} if backend else {}))
    if args is None and is_deepspeed_zero3_enabled():
        import torch.distributed as dist

        if not dist.is_initialized():
            raise RuntimeError("load_model under ZeRO-3 needs torch.distributed set up first: pass the task's "
                               "TrainingArguments as args=")
    keep = None
    if isinstance(ds_config, dict) and not is_deepspeed_zero3_enabled():
        stage = (ds_config.get("zero_optimization") or {}).get("stage")
        if stage == 3:
            from transformers.integrations import HfDeepSpeedConfig

            keep = HfDeepSpeedConfig(ds_config)  # noqa: F841 - alive while loading: transformers holds a weakref
    quant = {"quantization_config": quantization, "device_map": device_map} if quantization is not None else {}
    with _lean_heap(is_deepspeed_zero3_enabled()):
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), **dtype_kw(dtype),
                                                     trust_remote_code=trust_remote_code, **quant)
    del keep
    return model


@contextlib.contextmanager
def _lean_heap(on: bool) -> Iterator[None]:
    """Under ZeRO-3 every layer is gathered whole, loaded and re-partitioned, one after the
    other. glibc raises its mmap threshold each time such a block is freed (up to 32 MiB), so
    later blocks come from the heap and stay resident after they are freed: a CPU rank ends up
    holding about the whole model after all. A fixed 1 MiB threshold while loading hands each
    freed layer back to the system; afterwards a fixed 32 MiB one (what the dynamic threshold
    grows to) keeps training's allocations on the heap. Linux/glibc only; elsewhere a no-op."""
    libc = None
    if on and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(_M_MMAP_THRESHOLD, 1 << 20)
        except (OSError, AttributeError):
            libc = None
    try:
        yield
    finally:
        if libc is not None:
            libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
            libc.malloc_trim(0)


def dtype_kw(dtype) -> dict:
    """``dtype=`` for from_pretrained (transformers >= 4.56), ``torch_dtype=`` before it."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def rss_mb() -> dict:
    """{"rss_mb": now, "hwm_mb": peak so far} of this process (Linux ``/proc/self/status``)."""
    out: dict[str, float] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key = {"VmRSS:": "rss_mb", "VmHWM:": "hwm_mb"}.get(line.split(" ", 1)[0].split("\t", 1)[0])
            if key:
                out[key] = round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        return {}
    return out


def record_load(run_dir: Path, rank: int, before: dict, zero3: bool, model: Any) -> Optional[dict]:
    """Each rank: the class it loaded and its host RSS around loading the model, in
    ``telemetry/load-rank<N>.json`` and its log (``peak_mb`` is the process's peak right after)."""
    after = rss_mb()
    if not before or not after:
        return None
    rec = {"rank": rank, "zero3": zero3, "model_class": type(model).__name__,
           "before_mb": before.get("rss_mb"), "peak_mb": after.get("hwm_mb"),
           "rss_mb": after.get("rss_mb"), "load_peak_delta_mb": round(after["hwm_mb"] - before["rss_mb"], 1)}
    try:
        atomic_write_json(Path(run_dir) / "telemetry" / f"load-rank{rank}.json", rec)
    except OSError as exc:  # a convenience: training goes on, but say so
        log(f"note: cannot record load memory: {exc}")
    log(f"model {rec['model_class']} loaded{' under zero.Init' if zero3 else ''}: host RSS {rec['rss_mb']} MiB, "
        f"peak {rec['peak_mb']} MiB (+{rec['load_peak_delta_mb']} MiB while loading)")
    return rec
