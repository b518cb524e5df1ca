"""DeepSpeed configs: generated from the job's hyperparameters, or a user's file checked
against them. Light (no deepspeed import): used at submit time on the login node and by
the worker on the compute node.

Values that the HF Trainer fills in are left as ``"auto"`` so they always agree with the
job (batch size, accumulation, learning rate, precision, clipping).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from .job import DeepSpeedSpec, TrainSpec

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


def build(spec: DeepSpeedSpec, device: str) -> dict[str, Any]:
    """A config for the HF Trainer from the job's ``deepspeed:`` section."""
    zero: dict[str, Any] = {"stage": spec.stage}
    if spec.stage >= 1:
        zero.update(overlap_comm=device != "cpu", contiguous_gradients=True,
                    reduce_bucket_size="auto", allgather_bucket_size=5e8)
    if spec.stage == 3:
        zero.update(stage3_prefetch_bucket_size="auto", stage3_param_persistence_threshold="auto",
                    stage3_gather_16bit_weights_on_model_save=True)
    if spec.offload and spec.stage >= 1:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": device == "gpu"}
        if spec.stage == 3:
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


def load_user_config(path: Path) -> dict[str, Any]:
    text = Path(path).read_text(encoding="utf-8")
    return json.loads(text)


def check(config_path: Path, train: TrainSpec, world_size: int) -> list[str]:
    """Problems with a user's DeepSpeed config, one line each (empty when fine)."""
    try:
        cfg = load_user_config(config_path)
    except json.JSONDecodeError as exc:
        return [f"{config_path}:{exc.lineno}: invalid JSON: {exc.msg}"]
    except OSError as exc:
        return [f"{config_path}: cannot read: {exc}"]
    if not isinstance(cfg, dict):
        return [f"{config_path}: a DeepSpeed config is a JSON object"]
    problems: list[str] = []
    for key in cfg:
        if key not in KNOWN_TOP_LEVEL:
            problems.append(f"{config_path}: unknown DeepSpeed key '{key}'")
    zero = cfg.get("zero_optimization", {})
    if not isinstance(zero, dict):
        problems.append(f"{config_path}: zero_optimization must be an object")
        zero = {}
    stage = zero.get("stage", 0)
    if not isinstance(stage, int) or not 0 <= stage <= 3:
        problems.append(f"{config_path}: zero_optimization.stage must be 0, 1, 2 or 3 (got {stage!r})")
    for part in ("offload_optimizer", "offload_param"):
        dev = (zero.get(part) or {}).get("device") if isinstance(zero.get(part), dict) else None
        if dev is not None and dev not in OFFLOAD_DEVICES:
            problems.append(f"{config_path}: zero_optimization.{part}.device must be cpu, nvme or none (got {dev!r})")
    if "offload_param" in zero and isinstance(stage, int) and stage != 3:
        problems.append(f"{config_path}: offload_param needs zero_optimization.stage 3 (got {stage})")

    def explicit(key: str) -> Optional[Any]:
        value = cfg.get(key)
        return None if value in (None, "auto") else value

    micro, accum, total = (explicit("train_micro_batch_size_per_gpu"), explicit("gradient_accumulation_steps"),
                           explicit("train_batch_size"))
    if micro is not None and micro != train.batch_size:
        problems.append(f"{config_path}: train_micro_batch_size_per_gpu={micro} disagrees with the job's "
                        f"train.batch_size={train.batch_size}; use \"auto\"")
    if accum is not None and accum != train.gradient_accumulation:
        problems.append(f"{config_path}: gradient_accumulation_steps={accum} disagrees with the job's "
                        f"train.gradient_accumulation={train.gradient_accumulation}; use \"auto\"")
    want = train.batch_size * train.gradient_accumulation * world_size
    if total is not None and total != want:
        problems.append(f"{config_path}: train_batch_size={total} but batch_size x gradient_accumulation x "
                        f"ranks = {train.batch_size} x {train.gradient_accumulation} x {world_size} = {want}; "
                        "use \"auto\"")
    for prec in ("fp16", "bf16"):
        block = cfg.get(prec)
        if block is not None and not isinstance(block, dict):
            problems.append(f"{config_path}: {prec} must be an object such as {{\"enabled\": \"auto\"}}")
    return problems


def resolve(train: TrainSpec, world_size: int, device: str, base_dir: Path) -> Optional[dict[str, Any]]:
    """The config the worker hands to the Trainer, or None for plain DDP / one process.

    Default (``deepspeed`` unset): DeepSpeed ZeRO stage 0 on several GPUs or NPUs; none for one
    device or CPU. Stage 0 is DDP-equivalent data parallelism through DeepSpeed's engine; ZeRO
    > 0 only pays off for models that do not fit: measured on a 22.7M-parameter BERT, stages 1
    and 2 run at 0.53x and 0.52x DDP's samples/s for the same eval loss and no memory saved,
    stage 0 at 0.70x (benchmarks/bench_scale.py, docs/distributed.md).
    """
    ds = train.deepspeed
    if ds is False:
        return None
    if ds is None or ds is True:
        if world_size <= 1 or (ds is None and device == "cpu"):
            return None
        ds = DeepSpeedSpec()
    if ds.config:
        path = Path(ds.config)
        return load_user_config(path if path.is_absolute() else base_dir / path)
    return build(ds, device)
