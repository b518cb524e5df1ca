"""The memory pre-flight rules: :func:`memory` (a causal-lm or preference job's per-device
estimate, :mod:`hpcft.core.memory.estimate`, from the staged model's ``config.json``, against the
memory of the partition's GPUs/NPUs) and :func:`host_memory` (per node, against the job's
``mem`` or the nodes' RealMemory). A job that cannot fit is refused with the changes that would
make it fit; ``hpcft check`` prints the estimate either way. A model hpcft cannot size gets
"no estimate" and the reason, never a number it cannot back."""

from __future__ import annotations

from typing import Iterator, Optional

from ..core.job import Job
from ..core.memory.estimate import CONTEXT_GIB, Estimate, ModelShapeError, Plan, Shape, estimate, read_shape
from ..core.memory.plan import plan_of
from .checks import Check, ClusterView, Preflight
from .devices import device_memory, parse_size_gib

NAME = "memory"
HOST = "host memory"
_SIZES = (2, 4, 8, 16, 32, 64, 128)


def fixes(shape: Shape, plan: Plan, limit: float, per_node: int, qlora_ok: bool = True) -> list[str]:
    """Changes that make the job fit in ``limit`` GiB, each with its estimate, most direct first;
    a LoRA job last, ``method: qlora`` where the device can run bitsandbytes (``qlora_ok``: not an NPU)."""
    out: list[str] = []

    def fits(**kw) -> Optional[Estimate]:
        e = estimate(shape, Plan(**{**plan.__dict__, **kw}))
        return e if e.total <= limit else None

    if plan.method == "full":
        if e := fits(method="lora"):
            out.append(f"method: lora (~{e.total:.0f} GiB)")
        if plan.zero_stage != 3 and plan.world_size > 1 and (e := fits(zero_stage=3)):
            out.append(f"deepspeed: 3 on your {plan.world_size} devices (~{e.total:.0f} GiB)")
        for n in (s for s in _SIZES if s > plan.world_size):
            e = fits(zero_stage=3, world_size=n, per_node=min(n, per_node), offload=False, offload_params=False)
            if e:
                if n <= per_node:
                    out.append(f"deepspeed: 3 over {n} devices (gpus_per_node/npus_per_node: {n}; ~{e.total:.0f} GiB)")
                else:
                    out.append(f"deepspeed: 3 over {n} devices (nodes: {n // per_node} with {per_node} per node; "
                               f"~{e.total:.0f} GiB)")
                break
        if not plan.offload and (e := fits(zero_stage=3, offload=True, offload_params=True)):
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
    if plan.method == "lora" and qlora_ok and (e := fits(method="qlora", zero_stage=None, offload=False,
                                                          offload_params=False)):
        out.append(f"method: qlora (the base in 4-bit; ~{e.total:.0f} GiB)")
    return out


def job_estimate(p: Preflight) -> tuple[Optional[Shape], Optional[Plan], Optional[Check]]:
    """(shape, plan, None), or a check saying why there is no estimate, or (None, None, None)
    for jobs it does not apply to (not an LLM task, model not staged: the staged check says so)."""
    from ..core.assets import lookup
    from ..core.resolve import load_table
    from ..core.store import Cache

    job, settings = p.job, p.settings
    t = job.train
    if t is None or not t.is_llm:
        return None, None, None
    model = lookup("model", t.model, Cache(settings.cache), load_table(settings), base_dir=p.base_dir)
    if not model.found:
        return None, None, None
    try:
        shape = read_shape(model.path)
    except ModelShapeError as exc:
        return None, None, Check(NAME, True, f"no estimate: {exc}; the job is not checked for memory")
    return shape, plan_of(job, p.base_dir), None


def memory(p: Preflight) -> Iterator[Check]:
    shape, plan, why = job_estimate(p)
    if why is not None:
        yield why
    if shape is None:
        return
    est = estimate(shape, plan)
    r = p.job.resources
    if r.device == "cpu":
        yield Check(NAME, True, f"{est.summary()} (CPU job: host memory, below)")
        return
    facts = partition_facts(p.view, p.partition, r.device)
    note = allocator_note(p.job)
    try:
        limit, source = device_memory(p.settings.device_memory, p.partition, facts.types, facts.features)
    except ValueError as exc:  # a cluster config written before it was validated
        yield Check(NAME, False, f"device_memory in the cluster config: {exc}")
        return
    seen = measured(p, plan)
    if seen:
        note += (f"; measured: {seen['gib']:g} GiB reserved at the peak of run {seen['run_id']}"
                 f"{' (the largest of ' + str(seen['runs']) + ' runs)' if seen['runs'] > 1 else ''} "
                 "of the same model, data and plan")
    if limit is None:
        yield Check(NAME, True, f"{est.summary()}; device memory of partition '{p.partition}' unknown "
                                "(set device_memory in the cluster config, e.g. {a100: 80G, 910b: 64G}){note}")
    elif est.total <= limit and not (above := measured_above(seen, limit)):
        yield Check(NAME, True, f"{est.summary()}; fits {limit:.0f} GiB ({source}){note}")
    elif est.total <= limit:   # the estimate fits, but the same job allocated more where it ran
        # the changes that fit with the margin the measurement showed the estimate lacks
        short = (seen["allocated_gib"] + CONTEXT_GIB) / max(est.total, 1e-9)
        found = fixes(shape, plan, limit / short, facts.per_node or max(r.devices_per_node, 8), r.device != "npu")
        yield Check(NAME, False, f"{est.summary()}; fits {limit:.0f} GiB ({source}) by the estimate, but {above}"
                                 + (f"; counting the {short:.2f}x the estimate fell short, use " + ", or ".join(found)
                                    if found else ""))
    elif ran_within(seen, limit):   # what ran is the better figure: not refused
        yield Check(NAME, True, f"{est.summary()}; above the {limit:.0f} GiB of '{p.partition}' ({source}), but the "
                                f"same job ran within it{note} (+{CONTEXT_GIB:g} GiB context)")
    else:
        size = f"{est.params / 1e9:.2g}B"
        zero = f"ZeRO-{plan.zero_stage}" if plan.zero_stage is not None else "ZeRO-0"
        found = fixes(shape, plan, limit, facts.per_node or max(r.devices_per_node, 8), r.device != "npu")
        hint = ("; use " + ", or ".join(found)) if found else "; no single change makes it fit: use a smaller model"
        yield Check(NAME, False, f"{size} {plan.method} fine-tuning needs ~{est.total:.0f} GiB per device at {zero} "
                                 f"but {r.device.upper()}s of '{p.partition}' have {limit:.0f} GiB ({source}){hint}. "
                                 f"Estimate: {est.summary()}{note}")


def ran_within(seen: Optional[dict], limit: float) -> bool:
    """Whether runs of the same plan peaked (reserved, else allocated) within ``limit`` GiB with
    the context added: the measurement that lets through a job the estimate refuses."""
    return bool(seen) and seen["gib"] + CONTEXT_GIB <= limit


def measured_above(seen: Optional[dict], limit: float) -> str:
    """Why a measurement says the plan does not fit ``limit`` GiB, or "". Only the allocated peak
    counts: tensors that lived at once. A reserved peak on a larger device can hold cache the
    allocator would have freed under pressure, so it proves nothing about a smaller one."""
    alloc = (seen or {}).get("allocated_gib")
    if alloc is None or alloc + CONTEXT_GIB <= limit:
        return ""
    where = f" on '{seen['allocated_partition']}'" if seen.get("allocated_partition") else ""
    return (f"run {seen['allocated_run_id']} of the same model, data and plan allocated {alloc:g} GiB{where} "
            f"(+{CONTEXT_GIB:g} GiB context: above {limit:.0f})")


def allocator_note(job: Job) -> str:
    """The estimate's fragmentation allowance assumes the allocator's expandable segments, which
    the sbatch script turns on; a job whose ``env.vars`` sets its own allocator config without
    them is told what that costs."""
    var = "PYTORCH_NPU_ALLOC_CONF" if job.resources.device == "npu" else "PYTORCH_CUDA_ALLOC_CONF"
    value = job.env.vars.get(var)
    if value is None or "expandable_segments:true" in value.replace(" ", "").lower():
        return ""
    return (f"; note: env.vars sets {var}={value} without expandable_segments:True, so batches of varying "
            "length can fragment the allocator's cache beyond this estimate's 5 % allowance")


def measured(p: Preflight, plan: Plan) -> Optional[dict]:
    """The largest device peak earlier runs of the same model, data and plan measured
    (:func:`hpcft.runs.memory.earlier_peak`), or None."""
    from dataclasses import asdict

    from ..runs.memory import earlier_peak

    t = p.job.train
    try:
        return earlier_peak(p.settings.runs, t.model, t.dataset, asdict(plan))
    except OSError:   # no runs folder yet, or one this user cannot read
        return None


def host_limit(job: Job, facts: "PartitionFacts") -> tuple[Optional[float], str]:
    """GiB a node gives the job: its ``mem``, else the smallest RealMemory of the partition."""
    if job.resources.mem:
        text = job.resources.mem
        return parse_size_gib(text if text[-1].isalpha() else text + "M"), f"mem: {text}"
    if facts.real_memory_mb:
        return facts.real_memory_mb / 1024, f"RealMemory of '{facts.partition}' nodes"
    return None, ""


def host_memory(p: Preflight) -> Iterator[Check]:
    shape, plan, _ = job_estimate(p)
    if shape is None:
        return
    est = estimate(shape, plan)
    facts = partition_facts(p.view, p.partition, p.job.resources.device)
    need = est.host_total
    limit, source = host_limit(p.job, facts)
    parts = ", ".join(f"{k} {v:.0f}" for k, v in est.host.items() if k != "total" and v)
    digits = 1 if limit is not None and round(need) == round(limit) else 0   # never "needs 19 but gives 19"
    line = f"~{need:.{digits}f} GiB per node ({parts} GiB; {plan.per_node} rank(s))"
    if limit is None or need <= limit:
        yield Check(HOST, True, line + (f"; fits {limit:.0f} GiB ({source})" if limit else ""))
        return
    found = host_fixes(shape, plan, need, limit, facts, p.job)
    hint = ("; use " + ", or ".join(found)) if found else ""
    yield Check(HOST, False, f"{line} but {source} gives {limit:.{digits}f} GiB{hint}")


def host_fixes(shape: Shape, plan: Plan, need: float, limit: float, facts: "PartitionFacts", job: Job) -> list[str]:
    out: list[str] = []
    node = facts.real_memory_mb / 1024 if facts.real_memory_mb else None
    if job.resources.mem and node and need <= node:
        out.append(f"mem: {int(need + 1)}G (the nodes have {node:.0f} GiB)")
    if plan.zero_stage is not None and not (plan.zero_stage == 3 and plan.zero_init):
        e = estimate(shape, Plan(**{**plan.__dict__, "zero_stage": 3, "offload": False, "offload_params": False}))
        if e.host_total <= limit:
            out.append(f"deepspeed: 3 (zero.Init loads each rank's shard only; ~{e.host_total:.0f} GiB per node)")
    if plan.offload:
        e = estimate(shape, Plan(**{**plan.__dict__, "offload": False, "offload_params": False}))
        if e.host_total <= limit:
            out.append(f"deepspeed without offload (~{e.host_total:.0f} GiB per node; more device memory)")
    if plan.per_node > 1:
        for n in (x for x in (4, 2, 1) if x < plan.per_node):
            e = estimate(shape, Plan(**{**plan.__dict__, "per_node": n}))
            if e.host_total <= limit:
                out.append(f"{n} devices per node over more nodes (~{e.host_total:.0f} GiB per node)")
                break
    return out


class PartitionFacts:
    """A partition's gres types, node features, most devices per node and smallest RealMemory."""

    def __init__(self, partition: Optional[str], types: list[str], features: list[str], per_node: int,
                 real_memory_mb: int):
        self.partition, self.types, self.features = partition, types, features
        self.per_node, self.real_memory_mb = per_node, real_memory_mb


def partition_facts(view: Optional[ClusterView], partition: Optional[str], device: str) -> PartitionFacts:
    if view is None or partition not in view.partitions:
        return PartitionFacts(partition, [], [], 0, 0)
    types: list[str] = []
    feats: list[str] = []
    per_node, memory = 0, 0
    for name in view.partitions[partition].nodes:
        node = view.nodes.get(name)
        if node is None:
            continue
        types += [t for t in node.gres_types.get(device, []) if t not in types]
        feats += [f for f in node.features if f not in feats]
        per_node = max(per_node, node.gres.get(device, 0))
        if node.memory_mb:
            memory = min(memory, node.memory_mb) if memory else node.memory_mb
    return PartitionFacts(partition, types, feats, per_node, memory)
