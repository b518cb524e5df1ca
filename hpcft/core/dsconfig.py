"""DeepSpeed configs: generated from the job's hyperparameters, or a user's file checked
against them. Light (no deepspeed import): used at submit time on the login node and by
the worker on the compute node.

Values that the HF Trainer fills in are left as ``"auto"`` so they always agree with the
job (batch size, accumulation, learning rate, precision, clipping).

This module takes plain values and imports nothing from hpcft: :mod:`hpcft.core.job` calls
:func:`check` while validating a job, so importing the job schema here would make a cycle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

KNOWN_TOP_LEVEL = {
    "train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "optimizer",
    "scheduler", "fp16", "bf16", "amp", "gradient_clipping", "zero_optimization", "zero_allow_untested_optimizer",
    "zero_force_ds_cpu_optimizer", "steps_per_print", "wall_clock_breakdown", "dump_state", "flops_profiler",
    "activation_checkpointing", "sparse_attention", "data_efficiency", "curriculum_learning", "communication_data_type",
    "prescale_gradients", "gradient_predivide_factor", "sparse_gradients", "aio", "tensorboard", "wandb",
    "csv_monitor", "comms_logger", "autotuning", "elasticity", "checkpoint", "data_types", "compression_training",
    "memory_breakdown", "seq_parallel_communication_data_type", "torch_autocast",
}
OFFLOAD_DEVICES = {"cpu", "nvme", "none"}
MAX_BYTES = 1_000_000  # a DeepSpeed config is a few hundred bytes


class DeepSpeedFileError(ValueError):
    """A user's DeepSpeed file that cannot be read as a JSON object (one-line message)."""

    def __init__(self, message: str, line: Optional[int] = None):
        super().__init__(message)
        self.line = line


def build(stage: int, offload: bool, device: str) -> dict[str, Any]:
    """A config for the HF Trainer from the job's ``deepspeed:`` section (stage, offload)."""
    zero: dict[str, Any] = {"stage": stage}
    if stage >= 1:
        zero.update(overlap_comm=device != "cpu", contiguous_gradients=True,
                    reduce_bucket_size="auto", allgather_bucket_size=5e8)
    if stage == 3:
        zero.update(stage3_prefetch_bucket_size="auto", stage3_param_persistence_threshold="auto",
                    stage3_gather_16bit_weights_on_model_save=True)
    if offload and stage >= 1:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": device == "gpu"}
        if stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": device == "gpu"}
    return {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "gradient_clipping": "auto",
        "zero_optimization": zero,
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        # torch's AdamW: no fused_adam op to compile on first use (33-70 s on CPU nodes)
        "optimizer": {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto",
                                                  "weight_decay": "auto", "torch_adam": True}},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,  # hpcft's progress stream reports; keep DeepSpeed quiet
        "wall_clock_breakdown": False,
    }


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise DeepSpeedFileError(f"duplicate key {key!r}")
        seen[key] = value
    return seen


def load_user_config(path: Path) -> dict[str, Any]:
    """A user's DeepSpeed JSON object. Raises OSError, or DeepSpeedFileError with one line."""
    with open(path, "rb") as fh:
        raw = fh.read(MAX_BYTES + 1)
    if len(raw) > MAX_BYTES:
        raise DeepSpeedFileError(f"larger than {MAX_BYTES // 1_000_000} MB; a DeepSpeed config is a few hundred bytes")
    try:
        cfg = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        raise DeepSpeedFileError(f"invalid JSON: {exc.msg}", exc.lineno) from None
    except UnicodeDecodeError as exc:
        raise DeepSpeedFileError(f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})") from None
    except RecursionError:
        raise DeepSpeedFileError("nested too deeply") from None
    except ValueError as exc:  # e.g. an integer with thousands of digits
        if isinstance(exc, DeepSpeedFileError):
            raise
        raise DeepSpeedFileError(f"invalid JSON: {' '.join(str(exc).split())}") from None
    if not isinstance(cfg, dict):
        raise DeepSpeedFileError("a DeepSpeed config is a JSON object ({...})")
    return cfg


def check(config_path: Path, batch_size: Optional[int], gradient_accumulation: Optional[int],
          world_size: Optional[int]) -> list[str]:
    """Problems with a user's DeepSpeed config against the job's values, one line each (empty
    when fine). A value given as None is unknown (invalid in the job) and not compared."""
    try:
        cfg = load_user_config(config_path)
    except DeepSpeedFileError as exc:
        where = f"{config_path}:{exc.line}" if exc.line else str(config_path)
        return [f"{where}: {exc}"]
    except OSError as exc:
        return [f"{config_path}: cannot read: {exc.strerror or exc}"]
    problems: list[str] = []
    for key in cfg:
        if key not in KNOWN_TOP_LEVEL:
            problems.append(f"{config_path}: unknown DeepSpeed key {_show(key)}")
    zero = cfg.get("zero_optimization", {})
    if not isinstance(zero, dict):
        problems.append(f"{config_path}: zero_optimization must be an object")
        zero = {}
    stage = zero.get("stage", 0)
    if isinstance(stage, bool) or not isinstance(stage, int) or not 0 <= stage <= 3:
        problems.append(f"{config_path}: zero_optimization.stage must be 0, 1, 2 or 3 (got {_show(stage)})")
    for part in ("offload_optimizer", "offload_param"):
        dev = zero[part].get("device") if isinstance(zero.get(part), dict) else None
        if dev is not None and (not isinstance(dev, str) or dev not in OFFLOAD_DEVICES):
            problems.append(f"{config_path}: zero_optimization.{part}.device must be cpu, nvme or none "
                            f"(got {_show(dev)})")
    if "offload_param" in zero and isinstance(stage, int) and not isinstance(stage, bool) and stage != 3:
        problems.append(f"{config_path}: offload_param needs zero_optimization.stage 3 (got {stage})")

    def explicit(key: str) -> Optional[Any]:
        value = cfg.get(key)
        return None if value in (None, "auto") else value

    micro, accum, total = (explicit("train_micro_batch_size_per_gpu"), explicit("gradient_accumulation_steps"),
                           explicit("train_batch_size"))
    if micro is not None and batch_size is not None and micro != batch_size:
        problems.append(f"{config_path}: train_micro_batch_size_per_gpu={_show(micro)} disagrees with the job's "
                        f"train.batch_size={batch_size}; use \"auto\"")
    if accum is not None and gradient_accumulation is not None and accum != gradient_accumulation:
        problems.append(f"{config_path}: gradient_accumulation_steps={_show(accum)} disagrees with the job's "
                        f"train.gradient_accumulation={gradient_accumulation}; use \"auto\"")
    if total is not None and None not in (batch_size, gradient_accumulation, world_size):
        want = batch_size * gradient_accumulation * world_size
        if total != want:
            problems.append(f"{config_path}: train_batch_size={_show(total)} but batch_size x gradient_accumulation "
                            f"x ranks = {batch_size} x {gradient_accumulation} x {world_size} = {want}; "
                            "use \"auto\"")
    for prec in ("fp16", "bf16"):
        block = cfg.get(prec)
        if block is not None and not isinstance(block, dict):
            problems.append(f"{config_path}: {prec} must be an object such as {{\"enabled\": \"auto\"}}")
    return problems


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def resolve(train: Any, world_size: int, device: str, base_dir: Path) -> Optional[dict[str, Any]]:
    """The config the worker hands to the Trainer, or None for plain DDP / one process.
    ``train`` is the job's TrainSpec (only its ``deepspeed`` is read: None, a bool, or an
    object with ``stage``, ``offload`` and ``config``).

    Default (``deepspeed`` unset): DeepSpeed ZeRO stage 0 on several GPUs or NPUs; none for one
    device or CPU. Stage 0 is DDP-equivalent data parallelism through DeepSpeed's engine; ZeRO
    > 0 only pays off for models that do not fit: measured on a 22.7M-parameter BERT, stages 1
    and 2 run at 0.53x and 0.52x DDP's samples/s for the same eval loss and no memory saved,
    stage 0 at 0.70x (benchmarks/bench_scale.py, docs/distributed.md). ``method: qlora``: plain
    DDP (bitsandbytes' packed weights stay out of DeepSpeed's engine; the job file refuses a
    ``deepspeed:`` with it).
    """
    ds = train.deepspeed
    if ds is False:
        return None
    if ds is None or ds is True:
        if world_size <= 1 or (ds is None and device == "cpu") or getattr(train, "method", None) == "qlora":
            return None
        return build(0, False, device)
    if ds.config:
        path = Path(ds.config)
        return load_user_config(path if path.is_absolute() else base_dir / path)
    return build(ds.stage, ds.offload, device)
