"""Pre-flight: can the live cluster run this job as written? One check per line, each failure
naming the fix. Used by ``hpcft check`` and by ``hpcft submit``.

A rule is a function ``rule(p: Preflight) -> Iterator[Check]`` that yields nothing when it does
not apply; :data:`hpcft.preflight.rules.RULES` lists the rules in the order ``hpcft check``
prints them. :class:`Preflight` holds what they look at, and fetches each cluster fact once."""

from __future__ import annotations

import getpass
import glob
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Iterator, Optional

from ..cluster import slurm
from ..core.config import Settings
from ..core.job import Job
from ..core.slurm_time import format_duration
from . import envprobe
from .envprobe import EnvFacts
from .live import ClusterView


@dataclass
class Check:
    name: str
    ok: bool
    message: str = ""

    def line(self) -> str:
        return f"{'✓' if self.ok else '✗'} {self.name}" + (f": {self.message}" if self.message else "")


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


@dataclass
class Preflight:
    """What the rules look at: the job, where it runs, and cluster facts fetched once each."""

    job: Job
    settings: Settings
    base_dir: Path
    executor: str = "slurm"
    view: Optional[ClusterView] = None    # the live cluster (Slurm jobs); None otherwise
    partition: Optional[str] = None
    points: list[Job] = field(default_factory=list)  # a sweep: every point, one array task each
    check_assets: bool = True

    @property
    def jobs(self) -> list[Job]:
        return self.points or [self.job]

    @cached_property
    def part(self) -> Optional[slurm.Partition]:
        """The job's partition, when the cluster has it (the Slurm rules need it)."""
        if self.view is None or self.partition is None:
            return None
        return self.view.partitions.get(self.partition)

    @cached_property
    def members(self) -> list[slurm.Node]:
        return [self.view.nodes[n] for n in self.part.nodes if n in self.view.nodes] if self.part else []

    @cached_property
    def accounting(self) -> bool:
        return slurm.accounting_enabled()

    @cached_property
    def associations(self) -> list[dict[str, str]]:
        return slurm.associations(getpass.getuser())

    @cached_property
    def slurm_config(self) -> dict[str, str]:
        return slurm.config()

    @cached_property
    def queued(self) -> int:
        return slurm.queued_jobs(getpass.getuser())


# --------------------------------------------------------------------------- the job's executor and partition

def local_executor(p: Preflight) -> Iterator[Check]:
    if p.executor == "local" and p.job.resources.nodes > 1:
        yield Check("executor", False, "the local executor runs one node; use executor: slurm")


def partition(p: Preflight) -> Iterator[Check]:
    if p.view is None:
        return
    names = ", ".join(sorted(p.view.partitions)) or "(none)"
    if p.partition is None:
        yield Check("partition", False, f"no partition given and the cluster has no default; "
                                        f"set resources.partition (partitions: {names})")
    elif p.part is None:
        yield Check("partition", False, f"partition '{p.partition}' not found; partitions: {names}")
    elif not p.part.state.startswith("UP"):
        yield Check("partition", False, f"partition '{p.partition}' is {p.part.state}; ask the admins or "
                                        f"choose another (partitions: {names})")
    else:
        yield Check("partition", True, p.partition)


def device(p: Preflight) -> Iterator[Check]:
    r = p.job.resources
    if p.part is None or r.device == "cpu" or any(n.gres.get(r.device) for n in p.members):
        return
    same = [name for name in sorted(p.view.partitions) if p.view.kind(name, p.settings) == r.device]
    hint = f"; {r.device} partitions: {', '.join(same)}" if same else ""
    yield Check("device", False, f"partition '{p.partition}' has no {r.device.upper()}s{hint}")


def nodes(p: Preflight) -> Iterator[Check]:
    if p.part is None:
        return
    want, have = p.job.resources.nodes, max(p.part.total_nodes, len(p.part.nodes))
    if want > have:
        yield Check("nodes", False, f"{want} nodes requested but partition '{p.partition}' has {have}; "
                                    "lower resources.nodes")
    else:
        yield Check("nodes", True, f"{want} of {have}")


def gres(p: Preflight) -> Iterator[Check]:
    r = p.job.resources
    if p.part is None or not r.devices_per_node:
        return
    have = max((n.gres.get(r.device, 0) for n in p.members), default=0)
    fitting = sum(1 for n in p.members if n.gres.get(r.device, 0) >= r.devices_per_node)
    if r.devices_per_node > have:
        yield Check("gres", False, f"{r.devices_per_node} {r.device}s per node requested but nodes of "
                                   f"'{p.partition}' have at most {have}; lower resources.{r.device}s_per_node "
                                   "or use more nodes")
    elif fitting < r.nodes:
        yield Check("gres", False, f"{r.nodes} nodes with {r.devices_per_node} {r.device}s requested but "
                                   f"only {fitting} node(s) of '{p.partition}' have that many")
    else:
        yield Check("gres", True, f"{r.device}:{r.devices_per_node} per node")


def cpus(p: Preflight) -> Iterator[Check]:
    r = p.job.resources
    if p.part is None or not r.cpus_per_task:
        return
    have = max((n.cpus for n in p.members), default=0)
    need = r.cpus_per_task * max(1, r.devices_per_node)
    if have and need > have:
        yield Check("cpus", False, f"{need} CPUs per node needed ({r.cpus_per_task} per task) but nodes of "
                                   f"'{p.partition}' have {have}; lower resources.cpus_per_task")


def time_limit(p: Preflight) -> Iterator[Check]:
    if p.part is None:
        return
    want, limit = p.job.resources.time_seconds, p.part.max_time_s
    if limit is not None and want > limit:
        yield Check("time", False, f"time {format_duration(want)} exceeds the MaxTime {format_duration(limit)} "
                                   f"of partition '{p.partition}'; lower resources.time")
    else:
        yield Check("time", True, f"{format_duration(want)} (max {format_duration(limit) if limit else 'unlimited'})")


def account(p: Preflight) -> Iterator[Check]:
    name = p.job.resources.account or p.settings.account
    if p.part is None or not name or not p.accounting:
        return
    yours = sorted({row["account"] for row in p.associations})
    if name in yours:
        yield Check("account", True, name)
    else:
        yield Check("account", False, f"account '{name}' is not yours; your accounts: {', '.join(yours) or '(none)'}")


def qos(p: Preflight) -> Iterator[Check]:
    name = p.job.resources.qos or p.settings.qos
    if p.part is None or not name or not p.accounting:
        return
    allowed = sorted({q for row in p.associations for q in row["qos"].split(",") if q})
    if allowed and name not in allowed:
        yield Check("qos", False, f"qos '{name}' is not allowed for you; allowed: {', '.join(allowed)}")
    else:
        yield Check("qos", True, name)


# --------------------------------------------------------------------------- a sweep's job array

def array_size(p: Preflight) -> Iterator[Check]:
    """The site's MaxArraySize."""
    if not p.points:
        return
    size, most = len(p.points), int(p.slurm_config.get("MaxArraySize", "1001") or 1001)
    if size <= most:
        yield Check("array size", True, f"{size} points; the site's MaxArraySize allows {most}")
    else:
        yield Check("array size", False, f"{size} points but the site's MaxArraySize is {most} (indices "
                                         f"0-{most - 1}); split the sweep or lower its points")


def job_count(p: Preflight) -> Iterator[Check]:
    """The site's MaxJobCount, counting the jobs already queued."""
    most = int(p.slurm_config.get("MaxJobCount", "0") or 0) if p.points else 0
    if not most:
        return
    size = len(p.points)
    if p.queued + size <= most:
        yield Check("job count", True, f"{p.queued} queued + {size} <= MaxJobCount {most}")
    else:
        yield Check("job count", False, f"{p.queued} jobs queued + {size} tasks exceed the site's "
                                        f"MaxJobCount {most}")


def submit_limit(p: Preflight) -> Iterator[Check]:
    """The user's MaxSubmitJobs (association or QOS), when accounting enforces one."""
    limit = slurm.submit_limit(getpass.getuser()) if p.points else None
    if limit is None:
        return
    size = len(p.points)
    if p.queued + size <= limit:
        yield Check("submit limit", True, f"{p.queued} queued + {size} <= MaxSubmitJobs {limit}")
    else:
        yield Check("submit limit", False, f"{p.queued} jobs queued + {size} tasks exceed your MaxSubmitJobs "
                                           f"{limit}; lower the points or wait for queued jobs")


# --------------------------------------------------------------------------- the job's own environment

@dataclass
class JobEnv:
    """The Python environment a job activates (``env.venv`` / ``env.conda`` / ``env.python``),
    asked once (:mod:`hpcft.preflight.envprobe`): its interpreter is run here when it can be;
    otherwise its files are looked at (:attr:`asked` False; the node checks again)."""

    prefix: Optional[Path]  # None: no env given, the job runs this Python (or env.python)
    label: str              # how messages name it
    visible: bool           # False: given but not visible from here (the node checks again)
    interpreter: Optional[str] = None   # the job's Python, run here by the probe; None: this Python
    extra_paths: tuple[str, ...] = ()   # the job's own PYTHONPATH (env.vars)

    @cached_property
    def facts(self) -> Optional[EnvFacts]:
        return envprobe.probe(self.interpreter, self.extra_paths) if self.interpreter else None

    @property
    def asked(self) -> bool:
        """The answers come from the job's Python itself (this one, or the probe), not its files."""
        return (self.prefix is None and self.interpreter is None) or self.facts is not None

    def site_packages(self) -> list[Path]:
        return [Path(p) for p in glob.glob(str(self.prefix / "lib" / "python3*" / "site-packages"))]

    def has(self, package: str) -> bool:
        """Is ``package`` installed there (a package folder or a one-file module)?"""
        if self.facts is not None:
            return self.facts.has(package)
        if self.prefix is None:   # a folder of that name on sys.path (a namespace package) is not an install
            spec = importlib.util.find_spec(package)
            return spec is not None and spec.origin not in (None, "namespace")
        return any((sp / package).is_dir() or (sp / f"{package}.py").is_file() for sp in self.site_packages())

    def python(self) -> str:
        return self.interpreter or (f"{self.prefix}/bin/python" if self.prefix else sys.executable)

    def version(self, dist: str) -> Optional[str]:
        """The installed version of distribution ``dist`` (its ``*.dist-info`` name), None if absent."""
        if self.facts is not None:
            return self.facts.version(dist)
        if self.prefix is None:
            from importlib.metadata import PackageNotFoundError, version

            try:
                return version(dist)
            except PackageNotFoundError:
                return None
        for sp in self.site_packages():
            for info in sorted(sp.glob(f"{dist.replace('-', '_')}-*.dist-info")):
                return info.name[len(dist) + 1:-len(".dist-info")]
        return None

    def torch(self) -> Optional[dict]:
        """torch's build there (:func:`hpcft.preflight.envprobe.torch_info`), None without torch."""
        if self.facts is not None:
            return self.facts.torch
        if self.prefix is None:
            return envprobe.torch_info()
        for sp in self.site_packages():
            if (sp / "torch").is_dir():
                return {**envprobe.read_version_file(str(sp / "torch" / "version.py")), "npu": self.has("torch_npu")}
        return None


def job_env(job: Job, base_dir: Path) -> JobEnv:
    env = job.env
    extra = tuple(p for p in env.vars.get("PYTHONPATH", "").split(":") if p)
    given = Path(env.python).expanduser() if env.python else None
    if given is not None and not given.is_absolute():  # a name found on the node's PATH: not runnable here
        given = None
    if not (env.venv or env.conda):
        if env.python:
            return JobEnv(None, f"python {env.python}", given is not None and given.is_file(),
                          str(given) if given else None, extra)
        return JobEnv(None, f"this Python ({sys.executable})", True, sys.executable if extra else None, extra)
    prefix = Path(env.venv).expanduser() if env.venv else conda_prefix(env.conda)
    if prefix is not None and not prefix.is_absolute():
        prefix = base_dir / prefix
    label = f"venv {env.venv}" if env.venv else f"conda env {env.conda}"
    visible = prefix is not None and prefix.is_dir()
    python = str(given) if given else str(prefix / "bin" / "python") if visible else None
    return JobEnv(prefix, label, visible, python, extra)


def conda_prefix(name: str) -> Optional[Path]:
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


def torch_npu(p: Preflight) -> Iterator[Check]:
    """An NPU train job needs torch_npu in the environment the job activates."""
    if p.job.resources.device != "npu" or p.job.train is None:
        return
    env = job_env(p.job, p.base_dir)
    if not env.visible:
        yield Check("torch_npu", True, f"{env.label} is not visible from here; checked again on the node")
    elif env.has("torch_npu"):
        yield Check("torch_npu", True, env.label)
    else:
        yield Check("torch_npu", False, f"NPU job but {env.label} has no torch_npu: install hpcft[npu] there "
                                        "(see envs/npu.yml) or set env.conda/env.venv to an Ascend environment")


_VIRTUAL_ROOTS = (Path("/proc"), Path("/sys"), Path("/dev"))


def output_dir(p: Preflight) -> Iterator[Check]:
    """Can the job's ``output_dir`` be created and written? Nothing when the job keeps the
    default (inside the run folder). Creates nothing: it looks at the nearest existing
    ancestor, which must be a directory you can write and enter."""
    if p.job.output_dir:
        yield _output_dir(p.job.output_dir, p.base_dir)


def scow_job_dir(p: Preflight) -> Iterator[Check]:
    """SCOW placement: the cluster config's ``scow.job_dir`` read as the portal reads it (a
    note, not a failure: hpcft follows the portal, see :meth:`Settings.scow.job_dir_differences`)."""
    if p.executor != "slurm" or p.settings.scow.enabled is False:
        return
    for line in p.settings.scow.job_dir_differences():
        yield Check("scow job folder", True, f"note: {line}")


def _output_dir(given: str, base_dir: Path) -> Check:
    try:
        path = Path(given).expanduser()
    except RuntimeError:
        return Check("output_dir", False, f"{given}: cannot expand {given.split('/')[0]!r}: no such user")
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


STAGED = "assets staged"


def assets_staged(p: Preflight) -> Iterator[Check]:
    """Each distinct set of assets once (a sweep may vary the model)."""
    if not p.check_assets:
        return
    seen: set[str] = set()
    for job in p.jobs:
        key = job.all_assets().model_dump_json()
        if key not in seen:
            seen.add(key)
            yield staged_check(job, p.settings, p.base_dir)
            yield from trusted_code(job, p.settings, p.base_dir)


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


TRUSTED = "trusted code"


def trusted_code(job: Job, settings: Settings, base_dir: Optional[Path] = None) -> Iterator[Check]:
    """With the config's ``trusted_code`` set, the staged metric the job names runs only when each
    of its scripts is pinned there by sha256 (:mod:`hpcft.core.trusted_code`; the worker checks
    again right before ``evaluate.load``): one line per script that is not, naming its sha256, who
    staged it and how to pin it. Nothing when it is not set, or for a metric given as a local path."""
    if settings.trusted_code is None:
        return
    from ..core.assets import job_assets
    from ..core.resolve import load_table
    from ..core.store import Cache
    from ..core.trusted_code import refusals, staged_metric

    for a in job_assets(job, Cache(settings.cache), load_table(settings), base_dir):
        if a.kind != "metric" or a.path is None or a.local:
            continue
        if staged_metric(a.path, settings.cache) is None:  # a manifest pointing out of the cache's metrics/
            yield Check(TRUSTED, False, f"metric {a.repo_id or a.name}: {a.path} is not in {settings.cache}/metrics, "
                                        "so its code cannot be checked; refused (trusted_code is set)")
            continue
        problems = refusals(a.path, settings.cache, settings.trusted_code)
        for line in problems:
            yield Check(TRUSTED, False, line)
        if not problems:
            yield Check(TRUSTED, True, f"metric {a.repo_id or a.name}: its code is pinned in trusted_code")


def eval_data(p: Preflight) -> Iterator[Check]:
    """``train.eval_tasks``: every benchmark dataset the harness loads is staged; else, per task,
    the ``hpcft stage --eval`` command (the training would run for nothing before the step fails)."""
    if not p.check_assets:
        return
    from ..core.assets import lookup
    from ..core.eval_tasks import LM_EVAL_FLOOR, floor_text, resolve_tasks, version_tuple
    from ..core.resolve import load_table
    from ..core.store import Cache

    names = list(dict.fromkeys(n for job in p.jobs if job.train is not None for n in job.train.eval_tasks))
    if not names:
        return
    cache, table = Cache(p.settings.cache), load_table(p.settings)
    missing = [t.name for t in resolve_tasks(names, "train.eval_tasks")
               if any(lookup("dataset", d, cache, table).path is None for d in t.datasets)]
    if missing:
        yield Check("eval data staged", False, f"train.eval_tasks {', '.join(missing)}: not staged; on the login "
                                               f"node run: hpcft stage --eval {' '.join(missing)}")
    else:
        yield Check("eval data staged", True, ", ".join(names))
    env = job_env(p.job, p.base_dir)
    floor = floor_text()
    if env.visible and not env.has("lm_eval"):
        yield Check("lm-eval", False, f"train.eval_tasks needs lm-evaluation-harness but {env.label} has no lm_eval; "
                                      f"install: {env.python()} -m pip install 'lm-eval>={floor}'")
    elif env.visible and version_tuple(have := env.version("lm_eval") or "0") < LM_EVAL_FLOOR:
        yield Check("lm-eval", False, f"train.eval_tasks: {env.label} has lm-eval {have}, older than {floor}, whose "
                                      f"task files load the datasets hpcft stages: {env.python()} -m pip install "
                                      f"'lm-eval>={floor}'")
