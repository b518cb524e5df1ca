"""Placement: ``resources.partition: auto`` (and ``gpus_per_node``/``npus_per_node: auto``,
``train.deepspeed: auto``). Among the partitions whose devices fit the memory estimate, the
device counts per node (1, 2, 4, 8), the node counts and the ZeRO stages that fit, the plan
Slurm would start soonest (``sbatch --test-only``, one call per fitting candidate, all at once),
ties broken by fewer device-hours, then fewer devices. The chosen plan is written back into the
job (its resolved document), so every later step (the checks, the script, the run folder) sees
concrete values; :func:`place` also returns the table of candidates and why it chose.
"""

from __future__ import annotations

import copy
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Optional

from ..cluster import slurm
from ..core.config import Settings
from ..core.job import Job
from ..core.job_load import LoadedJob
from ..core.memory.estimate import CONTEXT_GIB, Estimate, Plan, estimate
from .checks import Preflight
from .devices import device_memory
from .live import ClusterView
from .memcheck import fixes, host_limit, job_estimate, measured_above, partition_facts, ran_within

DEVICE_COUNTS = (1, 2, 4, 8)
NODE_COUNTS = (1, 2, 4)
STAGES = (None, 0, 2, 3)   # None: no DeepSpeed (one device only)


@dataclass
class Candidate:
    partition: str
    devices: int                 # per node
    nodes: int
    zero_stage: Optional[int]
    device_gib: Optional[float]  # the estimate per device (None: the model cannot be sized)
    node_gib: Optional[float]
    limit_gib: Optional[float]   # the partition's device memory (None: unknown)
    fits: bool
    why: str = ""                # why it does not fit, or what Slurm said
    start: Optional[str] = None  # sbatch --test-only's start time
    device_hours: float = 0.0
    chosen: bool = False

    def row(self) -> str:
        zero = "-" if self.zero_stage is None else str(self.zero_stage)
        dev = f"{self.device_gib:.0f}" if self.device_gib is not None else "?"
        lim = f"/{self.limit_gib:.0f}" if self.limit_gib is not None else "/?"
        node = f"{self.node_gib:.0f}" if self.node_gib is not None else "?"
        start = self.start or ("-" if not self.fits else "?")
        mark = "→" if self.chosen else " "
        return (f"{mark} {self.partition:<12} {self.devices}x{self.nodes:<3} {zero:<4} {dev + lim:>9} {node:>6} "
                f"{'yes' if self.fits else 'no':<4} {start:<20} {self.device_hours:>6.1f}"
                + (f"  {self.why}" if self.why else ""))


HEADER = "  partition    dev  zero  GiB/dev  GiB/node fits start                dev-h"


@dataclass
class Placement:
    candidates: list[Candidate] = field(default_factory=list)
    chosen: Optional[Candidate] = None
    reason: str = ""
    calls: int = 0               # sbatch --test-only calls made (side by side)

    def table(self) -> str:
        return "\n".join([HEADER, *(c.row() for c in self.candidates)])

    def as_dict(self) -> dict:
        return {"chosen": asdict(self.chosen) if self.chosen else None, "reason": self.reason,
                "test_only_calls": self.calls, "candidates": [asdict(c) for c in self.candidates]}


def wants_placement(job: Job) -> bool:
    return job.resources.auto or (job.train is not None and job.train.deepspeed == "auto")


def partitions_for(job: Job, settings: Settings, view: ClusterView, device: str) -> list[str]:
    """The partitions to try: the one named, else the cluster config's list for the device, else
    the UP partitions of that kind whose nodes carry it (any that carries it, when none is of the kind)."""
    if job.resources.partition and job.resources.partition != "auto":
        return [job.resources.partition]
    listed = [p for p in getattr(settings.partitions, device) if p in view.partitions]
    if listed:
        return listed
    names = sorted(view.partitions)
    if device == "cpu":
        return [n for n in names if view.kind(n, settings) == "cpu" and view.partitions[n].state.startswith("UP")]
    carrying = [n for n in names if view.has_device(n, device) and view.partitions[n].state.startswith("UP")]
    return [n for n in carrying if view.kind(n, settings) == device] or carrying   # a gpu job: gpu partitions


def _device(job: Job, settings: Settings) -> str:
    r = job.resources
    return "npu" if r.npus_per_node else "gpu" if r.gpus_per_node else "cpu"


def _stages(job: Job, world: int) -> list[Optional[int]]:
    t = job.train
    if t is None or t.deepspeed != "auto":
        return ["job"]  # the job's own setting
    return [None] if world == 1 else [0, 2, 3]


def _with(loaded: LoadedJob, c: Candidate, device: str) -> LoadedJob:
    """The job with the candidate's values written into its resolved document, validated again."""
    data = copy.deepcopy(loaded.resolved)
    res = data.setdefault("resources", {})
    res["partition"] = c.partition
    res["nodes"] = c.nodes
    if device != "cpu":
        res[f"{device}s_per_node"] = c.devices
    train = data.get("train")
    if isinstance(train, dict) and train.get("deepspeed") == "auto":
        train["deepspeed"] = False if c.zero_stage is None else {"stage": c.zero_stage}
    return LoadedJob(Job.model_validate(data), loaded.source, data, loaded.base_dir)


def _sbatch_options(job: Job, settings: Settings, c: Candidate, device: str) -> list[str]:
    r = job.resources
    opts = ["-p", c.partition, "-N", str(c.nodes), "-t", str(max(1, r.time_seconds // 60))]
    if device != "cpu":
        gres = getattr(settings, f"{device}_gres").format(n=c.devices)
        opts += [f"--gres={gres}", f"--ntasks-per-node={c.devices}"]
    if r.cpus_per_task:
        opts.append(f"--cpus-per-task={r.cpus_per_task}")
    if r.mem:
        opts.append(f"--mem={r.mem}")
    for flag, value in (("--account", r.account or settings.account), ("--qos", r.qos or settings.qos),
                        ("--constraint", r.constraint)):
        if value:
            opts.append(f"{flag}={value}")
    return opts


def place(loaded: LoadedJob, settings: Settings, view: ClusterView, points: Optional[list[Job]] = None,
          executor: str = "slurm") -> tuple[Optional[LoadedJob], Placement]:
    """The placed job (None when nothing fits) and the table. ``points``: a sweep's jobs; a
    candidate fits when every point fits (the array runs them all on the one plan)."""
    job = loaded.job
    device = _device(job, settings)
    r = job.resources
    out = Placement()
    jobs = points or [job]
    from ..runs.memory import dataset_key

    sized = []
    seen: dict[str, dict] = {}   # a sweep's points mostly share model and data: the runs are read once
    for j in jobs:   # each distinct model once
        shape, plan, _ = job_estimate(Preflight(j, settings, loaded.base_dir, executor, view, None))
        key = json.dumps([j.train.model, dataset_key(j.train.dataset)], default=str) if shape is not None else ""
        if shape is not None and key not in seen:
            seen[key] = _measured(settings, j)
        sized.append((shape, plan, seen.get(key, {})))
    for part in partitions_for(job, settings, view, device):
        facts = partition_facts(view, part, device)
        if device != "cpu" and not facts.per_node:
            continue
        given = getattr(r, f"{device}s_per_node") if device != "cpu" else None
        counts = [0] if device == "cpu" else [given] if isinstance(given, int) else \
            [n for n in DEVICE_COUNTS if n <= facts.per_node]
        limit, _source = device_memory(settings.device_memory, part, facts.types, facts.features)
        node_limit, _ = host_limit(job, facts)
        total_nodes = max(view.partitions[part].total_nodes, len(view.partitions[part].nodes))
        node_counts = [n for n in NODE_COUNTS if n <= total_nodes] if given == "auto" and r.nodes == 1 else [r.nodes]
        for nodes in node_counts:
            for n in counts:
                world = max(1, n) * nodes
                for stage in _stages(job, world):
                    c = _candidate(part, n, nodes, stage, sized, limit, node_limit, r.time_seconds)
                    out.candidates.append(c)
            if nodes == 1 and any(c.fits for c in out.candidates if c.partition == part):
                break   # more nodes only when one node's devices are not enough
    fitting = [c for c in out.candidates if c.fits]
    if fitting:
        _ask_slurm(fitting, job, settings, device, out)
    startable = [c for c in fitting if c.start]
    if not startable:
        out.reason = _nothing_fits(out, sized)
        return None, out
    best = min(startable, key=lambda c: (c.start, c.device_hours, c.devices * c.nodes,
                                         -1 if c.zero_stage is None else c.zero_stage))
    best.chosen = True
    out.chosen = best
    later = sorted({c.start for c in startable if c.start > best.start})
    tied = [c for c in startable if c.start == best.start]
    out.reason = (f"starts soonest ({best.start}) of {len(startable)} fitting plan(s)"
                  + (f"; the others start at {later[0]} or later" if later else "")
                  + (f"; of the {len(tied)} starting then, the fewest device-hours" if len(tied) > 1 else ""))
    return _with(loaded, best, device), out


def _measured(settings: Settings, job: Job) -> dict:
    """What earlier runs of the job's model and data measured, per plan."""
    from ..runs.memory import measured_peaks

    try:
        return measured_peaks(settings.runs, job.train.model, job.train.dataset)
    except OSError:   # no runs folder yet, or one this user cannot read
        return {}


def _candidate(part: str, n: int, nodes: int, stage, sized, limit, node_limit, seconds: int) -> Candidate:
    """The candidate, sized by its most demanding job. A plan that earlier runs of the same
    model and data measured is judged by the measurement where the two disagree: it fits when it
    ran within ``limit`` (reserved peak + context), and it does not when it allocated more."""
    from ..runs.memory import plan_key

    dev_gib = node_gib = None
    zero = None
    fits, why = True, ""
    within: list[str] = []        # per job: runs that measured the plan within the limit
    above: list[str] = []         # per job: runs that allocated more than the limit holds
    refused = 0                   # jobs the estimate refuses and no run measured within the limit
    for shape, plan, seen in sized:
        if shape is None:
            continue
        p = Plan(**{**plan.__dict__, "world_size": max(1, n) * nodes, "per_node": max(1, n)})
        if stage != "job":
            p.zero_stage, p.offload, p.offload_params = stage, False, False
        elif p.world_size > 1 and p.zero_stage is None:
            p.zero_stage = 0
        e: Estimate = estimate(shape, p)
        zero = p.zero_stage
        dev_gib = max(dev_gib or 0.0, e.total)
        node_gib = max(node_gib or 0.0, e.host_total)
        m = seen.get(plan_key(asdict(p))) if limit is not None else None
        if m and measured_above(m, limit):
            above.append(f"run {m['allocated_run_id']} allocated {m['allocated_gib']:g} GiB")
        elif e.total > limit and ran_within(m, limit):
            within.append(f"{m['run_id']} measured {m['gib']:g}")
        elif limit is not None and e.total > limit:
            refused += 1
    if stage != "job":
        zero = stage
    if above:
        fits, why = False, "measured: " + "; ".join(above) + f" (+{CONTEXT_GIB:g} GiB context)"
    elif dev_gib is not None and limit is not None and dev_gib > limit and not refused:
        why = f"estimate {dev_gib:.0f}, but ran within it: " + "; ".join(within) + " GiB"
    elif dev_gib is not None and limit is not None and dev_gib > limit:
        fits, why = False, f"needs {dev_gib:.0f} GiB per device"
    if fits and node_gib is not None and node_limit is not None and node_gib > node_limit:
        fits, why = False, f"needs {node_gib:.0f} GiB per node"
    hours = max(1, n) * nodes * seconds / 3600
    return Candidate(part, n, nodes, zero, dev_gib, node_gib, limit, fits, why, device_hours=round(hours, 2))


def _ask_slurm(fitting: list[Candidate], job: Job, settings: Settings, device: str, out: Placement) -> None:
    """One ``sbatch --test-only`` per distinct resource request, side by side."""
    requests: dict[tuple, list[Candidate]] = {}
    for c in fitting:
        requests.setdefault((c.partition, c.devices, c.nodes), []).append(c)
    out.calls = len(requests)
    with ThreadPoolExecutor(max_workers=min(16, len(requests))) as pool:
        answers = dict(zip(requests, pool.map(
            lambda key: slurm.test_only_start(_sbatch_options(job, settings, requests[key][0], device)), requests)))
    for key, (est, text) in answers.items():
        for c in requests[key]:
            if est is not None:
                c.start = est.start
            else:
                c.fits = False
                c.why = "Slurm: " + (text.replace("sbatch: error: ", "").splitlines() or ["refused"])[-1][:120]


def _nothing_fits(out: Placement, sized) -> str:
    if not out.candidates:
        return "no partition carries the job's device"
    refused = [c for c in out.candidates if c.why.startswith("Slurm")]
    if refused and len(refused) == len([c for c in out.candidates if c.device_gib is None or c.why.startswith("Slurm")]):
        return "Slurm accepts none of the plans: " + refused[0].why
    biggest = max(out.candidates, key=lambda c: (c.limit_gib or 0, c.devices * c.nodes))
    shape, plan = next(((s, p) for s, p, _ in sized if s is not None), (None, None))
    if shape is None or biggest.limit_gib is None:
        return "no plan fits: " + "; ".join(sorted({c.why for c in out.candidates if c.why}))
    p = Plan(**{**plan.__dict__, "world_size": max(1, biggest.devices) * biggest.nodes,
                "per_node": max(1, biggest.devices)})
    found = fixes(shape, p, biggest.limit_gib, max(1, biggest.devices))
    return (f"no partition fits: the largest plan ({biggest.partition}, {biggest.devices}x{biggest.nodes}) "
            f"{biggest.why or 'does not fit'} of {biggest.limit_gib:.0f}"
            + ("; use " + ", or ".join(found) if found else "; use a smaller model"))
