"""Pre-flight: can the live cluster run this job as written? One check per line,
each failure naming the fix. Used by ``hpcft check`` and by ``hpcft submit``."""

from __future__ import annotations

import getpass
import glob
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from ..cluster import slurm
from ..core.config import Settings
from ..core.job import Job
from ..core.slurm_time import format_duration


@dataclass
class Check:
    name: str
    ok: bool
    message: str = ""

    def line(self) -> str:
        return f"{'✓' if self.ok else '✗'} {self.name}" + (f": {self.message}" if self.message else "")


@dataclass
class ClusterView:
    """A snapshot of the cluster's partitions and nodes (one scontrol call each)."""

    partitions: dict[str, slurm.Partition]
    nodes: dict[str, slurm.Node]

    @classmethod
    def live(cls) -> "ClusterView":
        return cls(slurm.partitions(), slurm.nodes())

    def default_partition(self) -> Optional[str]:
        for p in self.partitions.values():
            if p.default:
                return p.name
        return None

    def kind(self, partition: str, settings: Settings) -> str:
        """gpu/npu/cpu: the cluster config's lists first, then the partition's name, then the
        gres its nodes offer (npu > gpu > cpu)."""
        for kind in ("npu", "gpu", "cpu"):
            if partition in getattr(settings.partitions, kind):
                return kind
        lowered = partition.lower()
        for kind, words in (("npu", ("npu", "ascend", "910")), ("gpu", ("gpu", "cuda", "a100", "h100", "v100")),
                            ("cpu", ("cpu",))):
            if any(w in lowered for w in words):
                return kind
        gres: set[str] = set()
        for n in self.partitions[partition].nodes:
            if n in self.nodes:
                gres |= set(self.nodes[n].gres)
        return "npu" if "npu" in gres else "gpu" if "gpu" in gres else "cpu"

    def has_device(self, partition: str, device: str) -> bool:
        return any(self.nodes[n].gres.get(device) for n in self.partitions[partition].nodes if n in self.nodes)


def resolve_partition(job: Job, settings: Settings, view: Optional[ClusterView]) -> Optional[str]:
    if job.resources.partition:
        return job.resources.partition
    device = job.resources.device
    if device in settings.default_partition:
        return settings.default_partition[device]
    if view is None:
        return None
    if device != "cpu":  # a partition of that kind whose nodes carry the device, else any that carries it
        carrying = [name for name in sorted(view.partitions) if view.has_device(name, device)]
        for name in carrying:
            if view.kind(name, settings) == device:
                return name
        if carrying:
            return carrying[0]
    return view.default_partition()


def run_checks(job: Job, settings: Settings, view: ClusterView, partition: Optional[str],
               extra: tuple[Callable[[], Check], ...] = ()) -> list[Check]:
    r = job.resources
    checks: list[Check] = []
    names = ", ".join(sorted(view.partitions)) or "(none)"
    if partition is None:
        checks.append(Check("partition", False, f"no partition given and the cluster has no default; "
                                                f"set resources.partition (partitions: {names})"))
        return checks
    part = view.partitions.get(partition)
    if part is None:
        checks.append(Check("partition", False, f"partition '{partition}' not found; partitions: {names}"))
        return checks
    if not part.state.startswith("UP"):
        checks.append(Check("partition", False, f"partition '{partition}' is {part.state}; ask the admins or "
                                                f"choose another (partitions: {names})"))
    else:
        checks.append(Check("partition", True, partition))

    members = [view.nodes[n] for n in part.nodes if n in view.nodes]
    if r.device != "cpu" and not any(n.gres.get(r.device) for n in members):
        same = [p for p in sorted(view.partitions) if view.kind(p, settings) == r.device]
        hint = f"; {r.device} partitions: {', '.join(same)}" if same else ""
        checks.append(Check("device", False, f"partition '{partition}' has no {r.device.upper()}s{hint}"))

    if r.nodes > max(part.total_nodes, len(part.nodes)):
        checks.append(Check("nodes", False, f"{r.nodes} nodes requested but partition '{partition}' has "
                                            f"{max(part.total_nodes, len(part.nodes))}; lower resources.nodes"))
    else:
        checks.append(Check("nodes", True, f"{r.nodes} of {max(part.total_nodes, len(part.nodes))}"))

    if r.devices_per_node:
        have = max((n.gres.get(r.device, 0) for n in members), default=0)
        if r.devices_per_node > have:
            checks.append(Check("gres", False, f"{r.devices_per_node} {r.device}s per node requested but "
                                               f"nodes of '{partition}' have at most {have}; "
                                               f"lower resources.{r.device}s_per_node or use more nodes"))
        else:
            fitting = sum(1 for n in members if n.gres.get(r.device, 0) >= r.devices_per_node)
            if fitting < r.nodes:
                checks.append(Check("gres", False, f"{r.nodes} nodes with {r.devices_per_node} {r.device}s "
                                                   f"requested but only {fitting} node(s) of '{partition}' have that many"))
            else:
                checks.append(Check("gres", True, f"{r.device}:{r.devices_per_node} per node"))

    if r.cpus_per_task:
        cpus = max((n.cpus for n in members), default=0)
        need = r.cpus_per_task * max(1, r.devices_per_node)
        if cpus and need > cpus:
            checks.append(Check("cpus", False, f"{need} CPUs per node needed ({r.cpus_per_task} per task) but "
                                               f"nodes of '{partition}' have {cpus}; lower resources.cpus_per_task"))

    limit = part.max_time_s
    if limit is not None and r.time_seconds > limit:
        checks.append(Check("time", False, f"time {format_duration(r.time_seconds)} exceeds the MaxTime "
                                           f"{format_duration(limit)} of partition '{partition}'; "
                                           f"lower resources.time"))
    else:
        checks.append(Check("time", True, f"{format_duration(r.time_seconds)} "
                                          f"(max {format_duration(limit) if limit else 'unlimited'})"))

    account = r.account or settings.account
    qos = r.qos or settings.qos
    if (account or qos) and slurm.accounting_enabled():
        rows = slurm.associations(getpass.getuser())
        accounts = sorted({row["account"] for row in rows})
        if account and account not in accounts:
            checks.append(Check("account", False, f"account '{account}' is not yours; your accounts: "
                                                  f"{', '.join(accounts) or '(none)'}"))
        elif account:
            checks.append(Check("account", True, account))
        qoses = sorted({q for row in rows for q in row["qos"].split(",") if q})
        if qos and qoses and qos not in qoses:
            checks.append(Check("qos", False, f"qos '{qos}' is not allowed for you; allowed: {', '.join(qoses)}"))
        elif qos:
            checks.append(Check("qos", True, qos))
    for fn in extra:
        checks.append(fn())
    return checks


def _site_packages_of(prefix: Path) -> list[Path]:
    return [Path(p) for p in glob.glob(str(prefix / "lib" / "python3*" / "site-packages"))]


def _conda_prefix(name: str) -> Optional[Path]:
    if "/" in name:
        return Path(name).expanduser()
    roots = [p for p in os.environ.get("CONDA_ENVS_PATH", "").split(":") if p]
    roots.append(str(Path("~/.conda/envs").expanduser()))
    if os.environ.get("CONDA_EXE"):
        roots.append(str(Path(os.environ["CONDA_EXE"]).resolve().parent.parent / "envs"))
    for root in roots:
        if (Path(root) / name).is_dir():
            return Path(root) / name
    return None


def npu_env_check(job: Job, base_dir: Path) -> Optional[Check]:
    """An NPU train job needs torch_npu in the environment the job activates."""
    if job.resources.device != "npu" or job.train is None:
        return None
    env = job.env
    if env.venv or env.conda:
        prefix = Path(env.venv).expanduser() if env.venv else _conda_prefix(env.conda)
        if prefix is not None and not prefix.is_absolute():
            prefix = base_dir / prefix
        label = f"venv {env.venv}" if env.venv else f"conda env {env.conda}"
        if prefix is None or not prefix.is_dir():
            return Check("torch_npu", True, f"{label} is not visible from here; checked again on the node")
        found = any((sp / "torch_npu").is_dir() for sp in _site_packages_of(prefix))
    else:
        label = f"this Python ({os.sys.executable})"
        found = importlib.util.find_spec("torch_npu") is not None
    if found:
        return Check("torch_npu", True, label)
    return Check("torch_npu", False, f"NPU job but {label} has no torch_npu: install hpcft[npu] there "
                                     "(see envs/npu.yml) or set env.conda/env.venv to an Ascend environment")


STAGED = "assets staged"


def staged_check(job: Job, settings: Settings, base_dir: Optional[Path] = None) -> Check:
    """Every model/dataset/metric the job names is staged (or is an existing local path); else
    the exact ``hpcft stage ...`` to run on the login node. The worker runs the same lookup
    (:mod:`hpcft.core.assets`) before it imports anything heavy."""
    from ..core.assets import job_assets, problems, stage_command
    from ..core.resolve import load_table
    from ..core.store import Cache

    table = load_table(settings)
    found = job_assets(job, Cache(settings.cache), table, base_dir)
    missing = [a for a in found if not a.found]
    if not missing:
        return Check(STAGED, True)
    hub = [a for a in missing if not a.local]
    if hub:
        return Check(STAGED, False, stage_command(hub, table))
    return Check(STAGED, False, "; ".join(problems(missing, table)))


_VIRTUAL_ROOTS = (Path("/proc"), Path("/sys"), Path("/dev"))


def output_dir_check(job: Job, base_dir: Path) -> Optional[Check]:
    """Can the job's ``output_dir`` be created and written? None when the job keeps the
    default (inside the run folder). Creates nothing: it looks at the nearest existing
    ancestor, which must be a directory you can write and enter."""
    if not job.output_dir:
        return None
    try:
        path = Path(job.output_dir).expanduser()
    except RuntimeError:
        return Check("output_dir", False, f"{job.output_dir}: cannot expand "
                                          f"{job.output_dir.split('/')[0]!r}: no such user")
    path = Path(os.path.abspath(path if path.is_absolute() else base_dir / path))
    try:
        resolved = path.resolve()
    except (RuntimeError, OSError) as exc:  # a symlink loop
        return Check("output_dir", False, f"{path}: cannot be resolved: {exc}")
    for shown in (path, resolved):  # as written, and with symlinks followed
        for root in _VIRTUAL_ROOTS:
            if shown == root or root in shown.parents:
                return Check("output_dir", False, f"{path}: under {root}, a virtual filesystem; "
                                                  "choose a folder on a shared filesystem")
    existing = path
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = ("exists and is not a directory" if existing == path
                else f"cannot be created: {existing} is not a directory")
        return Check("output_dir", False, f"{path}: {what}")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = ("is not writable by you" if existing == path
                else f"cannot be created: {existing} is not writable by you")
        return Check("output_dir", False, f"{path}: {what}")
    return Check("output_dir", True, str(path) if existing == path else f"{path} (will be created)")
