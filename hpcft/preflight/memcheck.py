"""The memory pre-flight rule (:func:`memory`): a causal-lm job's per-device
estimate (:mod:`hpcft.preflight.estimate`, from the staged model's ``config.json``) against the device
memory of the partition's GPUs/NPUs. A job that cannot fit is refused with the changes that
would make it fit; ``hpcft check`` prints the estimate either way."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Optional

from ..core.job import Job
from .checks import Check, ClusterView, Preflight
from .estimate import Estimate, ModelShapeError, Plan, Shape, device_memory, estimate, read_shape

NAME = "memory"
_SIZES = (2, 4, 8, 16, 32, 64, 128)


def plan_of(job: Job, base_dir: Path) -> Plan:
    t, r = job.train, job.resources
    world = r.world_size if r.device != "cpu" else 1
    precision = t.precision if t.precision != "auto" else ("fp32" if r.device == "cpu" else "bf16")
    stage: Optional[int] = None
    offload = False
    ds = t.deepspeed
    if world > 1 and ds is not False:
        stage = 0
        if ds is not None and ds is not True:
            stage, offload = ds.stage, ds.offload
            if ds.config:
                stage, offload = _from_file(job, ds.config, base_dir, stage)
    return Plan(method=t.llm_method, precision=precision, zero_stage=stage, offload=offload, world_size=world,
                batch_size=t.batch_size, seq_len=t.max_seq_length,
                gradient_checkpointing=t.gradient_checkpointing is not False,
                lora_r=t.lora.r if t.lora else 8, lora_targets=t.lora.target_modules if t.lora else "all-linear")


def _from_file(job: Job, config: str, base_dir: Path, default: int) -> tuple[int, bool]:
    p = Path(config).expanduser()
    try:
        zero = json.loads((p if p.is_absolute() else base_dir / p).read_text()).get("zero_optimization", {})
    except (OSError, ValueError, AttributeError):
        return default, False
    return int(zero.get("stage", default) or 0), "offload_optimizer" in zero or "offload_param" in zero


def fixes(shape: Shape, plan: Plan, limit: float, per_node: int) -> list[str]:
    """Changes that make the job fit in ``limit`` GiB, each with its estimate, most direct first."""
    out: list[str] = []

    def fits(**kw) -> Optional[Estimate]:
        e = estimate(shape, Plan(**{**plan.__dict__, **kw}))
        return e if e.total <= limit else None

    if plan.method == "full":
        e = fits(method="lora", zero_stage=plan.zero_stage if plan.world_size > 1 else None)
        if e:
            out.append(f"method: lora (~{e.total:.0f} GiB)")
        if plan.zero_stage != 3 and plan.world_size > 1 and (e := fits(zero_stage=3)):
            out.append(f"deepspeed: 3 on your {plan.world_size} devices (~{e.total:.0f} GiB)")
        for n in (s for s in _SIZES if s > plan.world_size):
            e = fits(zero_stage=3, world_size=n, offload=False)
            if e:
                if n <= per_node:
                    out.append(f"deepspeed: 3 over {n} devices (gpus_per_node/npus_per_node: {n}; ~{e.total:.0f} GiB)")
                else:
                    out.append(f"deepspeed: 3 over {n} devices (nodes: {n // per_node} with {per_node} per node; "
                               f"~{e.total:.0f} GiB)")
                break
        if not plan.offload and (e := fits(zero_stage=3, offload=True, world_size=max(plan.world_size, 1))):
            out.append(f"deepspeed: {{stage: 3, offload: true}} (~{e.total:.0f} GiB on the device; slower, "
                       "needs host memory)")
    elif plan.zero_stage != 3 and plan.world_size > 1 and (e := fits(zero_stage=3)):
        out.append(f"deepspeed: 3 (~{e.total:.0f} GiB)")
    if not plan.gradient_checkpointing and (e := fits(gradient_checkpointing=True)):
        out.append(f"gradient_checkpointing: true (~{e.total:.0f} GiB)")
    if plan.batch_size > 1 and (e := fits(batch_size=1)):
        out.append(f"batch_size: 1 with gradient_accumulation: {plan.batch_size} (~{e.total:.0f} GiB)")
    if plan.seq_len > 512 and (e := fits(seq_len=plan.seq_len // 2)):
        out.append(f"max_seq_length: {plan.seq_len // 2} (~{e.total:.0f} GiB)")
    return out


def memory(p: Preflight) -> Iterator[Check]:
    """Nothing for jobs it does not apply to (not causal-lm, model not staged: the staged check says so)."""
    from ..core.assets import lookup
    from ..core.resolve import load_table
    from ..core.store import Cache

    job, settings = p.job, p.settings
    t = job.train
    if t is None or not t.is_llm:
        return
    model = lookup("model", t.model, Cache(settings.cache), load_table(settings), base_dir=p.base_dir)
    if not model.found:
        return
    try:
        shape = read_shape(model.path)
    except ModelShapeError as exc:
        yield Check(NAME, True, f"no estimate: {exc}")
        return
    plan = plan_of(job, p.base_dir)
    est = estimate(shape, plan)
    r = job.resources
    if r.device == "cpu":
        yield Check(NAME, True, f"{est.summary()} (CPU job: host memory, not checked)")
        return
    gres_types, features, per_node = _partition_facts(p.view, p.partition, r.device)
    limit, source = device_memory(settings.device_memory, p.partition, gres_types, features)
    if limit is None:
        yield Check(NAME, True, f"{est.summary()}; device memory of partition '{p.partition}' unknown "
                                "(set device_memory in the cluster config, e.g. {a100: 80G, 910b: 64G})")
    elif est.total <= limit:
        yield Check(NAME, True, f"{est.summary()}; fits {limit:.0f} GiB ({source})")
    else:
        size = f"{est.params / 1e9:.2g}B"
        zero = f"ZeRO-{plan.zero_stage}" if plan.zero_stage is not None else "ZeRO-0"
        found = fixes(shape, plan, limit, per_node or max(r.devices_per_node, 8))
        hint = ("; use " + ", or ".join(found)) if found else "; no single change makes it fit: use a smaller model"
        yield Check(NAME, False, f"{size} {plan.method} fine-tuning needs ~{est.total:.0f} GiB per device at {zero} "
                                 f"but {r.device.upper()}s of '{p.partition}' have {limit:.0f} GiB ({source}){hint}. "
                                 f"Estimate: {est.summary()}")


def _partition_facts(view: Optional[ClusterView], partition: Optional[str], device: str
                     ) -> tuple[list[str], list[str], int]:
    """(gres types, node features, most devices per node) of a partition, from the live view."""
    if view is None or partition not in view.partitions:
        return [], [], 0
    types: set[str] = set()
    feats: set[str] = set()
    per_node = 0
    for name in view.partitions[partition].nodes:
        node = view.nodes.get(name)
        if node is None:
            continue
        types |= set(getattr(node, "gres_types", {}).get(device, []))
        feats |= set(getattr(node, "features", []))
        per_node = max(per_node, node.gres.get(device, 0))
    return sorted(types), sorted(feats), per_node
