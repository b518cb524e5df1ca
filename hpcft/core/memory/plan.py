"""How a job trains, as the memory estimate sees it (:class:`~.estimate.Plan`, from the job file),
and the one decision hpcft takes from the estimate on the node: whether a job that left
``train.gradient_checkpointing`` out recomputes its activations.

Checkpointing trades memory for about a third more compute per step (every layer's forward runs
twice). It is what makes a long sequence or a large batch fit; when the activations fit without
it, it only slows the run. So a job that does not say is checked on the node, against the memory
the device has free there: off when the estimate without checkpointing takes at most
:data:`SHARE` of it, on otherwise, and on whenever the model cannot be sized or the device's
memory is unknown. ``gradient_checkpointing: true`` or ``false`` is always obeyed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from ..job import Job
from .estimate import GiB, ModelShapeError, Plan, estimate, read_shape

SHARE = 0.8   # of the device's free memory the estimate without checkpointing may take


def plan_of(job: Job, base_dir: Path) -> Plan:
    """What the worker will run: DeepSpeed as the job says (on one device too, when it names a
    stage or a file), else ZeRO-0 through DeepSpeed's engine on several devices (QLoRA: DDP)."""
    t, r = job.train, job.resources
    world = r.world_size if r.device != "cpu" else 1
    precision = t.precision if t.precision != "auto" else ("fp32" if r.device == "cpu" else "bf16")
    stage: Optional[int] = None
    offload = offload_params = False
    ds = t.deepspeed
    if ds is not None and ds is not False and ds is not True and ds != "auto":
        stage, offload = ds.stage, ds.offload
        offload_params = ds.offload and ds.stage == 3
        if ds.config:
            stage, offload, offload_params = _from_file(ds.config, base_dir, stage)
    elif world > 1 and ds is not False and t.llm_method != "qlora":
        stage = 0
    task = getattr(t, "task", "causal-lm")
    grpo = task == "grpo" and t.grpo is not None
    return Plan(method=t.llm_method, task=task if task in ("dpo", "kto", "orpo", "simpo", "grpo") else "sft",
                rollouts=t.batch_size * t.gradient_accumulation if grpo else 0, beta=t.grpo.beta if grpo else 0.0,
                precision=precision, zero_stage=stage, offload=offload, offload_params=offload_params,
                world_size=world, per_node=max(1, r.devices_per_node) if r.device != "cpu" else 1,
                batch_size=t.batch_size, seq_len=t.max_seq_length,
                gradient_checkpointing=t.gradient_checkpointing is not False,
                lora_r=t.lora.r if t.lora else 8, lora_targets=t.lora.target_modules if t.lora else "all-linear",
                optimizer="foreach" if r.device == "npu" else "fused")   # hpcft.worker.trainer.optimizer_name


def _offloads(section) -> bool:
    """``offload_optimizer``/``offload_param`` move state only with device cpu or nvme
    (Qwen's ds_config_zero3.json writes ``{"device": "none"}``)."""
    return isinstance(section, dict) and str(section.get("device", "none")).lower() in ("cpu", "nvme")


def _from_file(config: str, base_dir: Path, default: int) -> tuple[int, bool, bool]:
    p = Path(config).expanduser()
    try:
        zero = json.loads((p if p.is_absolute() else base_dir / p).read_text()).get("zero_optimization", {})
        stage = int(zero.get("stage", default) or 0)
    except (OSError, ValueError, AttributeError, TypeError):  # the job file check reports the file
        return default, False, False
    return stage, _offloads(zero.get("offload_optimizer")), _offloads(zero.get("offload_param"))


def checkpointing(job: Job, base_dir: Path, model_dir: Path, *, precision: str,
                  free_gib: Optional[float]) -> tuple[bool, str]:
    """(on?, the reason, one line) for a job whose ``train.gradient_checkpointing`` is unset;
    ``precision`` is what the device trains in, ``free_gib`` what it has free for this rank."""
    t = job.train
    if t.gradient_checkpointing is not None:
        on = bool(t.gradient_checkpointing)
        return on, f"{'on' if on else 'off'}: the job's train.gradient_checkpointing: {str(on).lower()}"
    force = "gradient_checkpointing: true or false in the job decides"
    if free_gib is None:
        return True, f"on: the device's free memory is unknown ({force})"
    try:
        shape = read_shape(model_dir)
    except ModelShapeError as exc:
        return True, f"on: no memory estimate for this model ({exc}; {force})"
    plan = plan_of(job, base_dir)
    without = estimate(shape, Plan(**{**plan.__dict__, "precision": precision, "gradient_checkpointing": False}))
    need = without.total
    if need <= SHARE * free_gib:
        return False, (f"off: without it the estimate is {need:.1f} GiB, within {SHARE:.0%} of the {free_gib:.1f} GiB "
                       f"this rank has free, so no layer is recomputed ({force})")
    return True, (f"on: without it the estimate is {need:.1f} GiB, over {SHARE:.0%} of the {free_gib:.1f} GiB "
                  f"this rank has free ({force})")


__all__ = ["GiB", "SHARE", "checkpointing", "plan_of"]
