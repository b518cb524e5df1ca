"""The life of one worker process, before and around its task: environment, task identity,
assets, status. What the task itself does (its phases) is :mod:`hpcft.worker.task`'s; the
Trainer every task configures is :mod:`hpcft.worker.trainer`'s.

Order matters and is the point of this module:

1. the launch spec's environment applied (before any HF import);
2. this task's rank, logs, rendezvous and devices (:mod:`hpcft.worker.taskenv`);
3. every asset looked up in the cache (no torch yet: a missing one fails in about a second
   with the exact ``hpcft stage ...`` command), the same lookup the submit check ran;
4. the USR2 handler installed (see :mod:`hpcft.worker.timelimit`), then the task runs, guarded:
   a failure is recorded in ``progress.jsonl`` and ``status.json`` before it propagates.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from hpcft.core.assets import JobAsset, job_assets, require
from hpcft.core.atomic import atomic_write_json, read_json
from hpcft.core.errors import TrustError
from hpcft.core.job import Job
from hpcft.core.offline import OFFLINE_FLAGS, ensure_private, join_paths
from hpcft.core.rundir import LaunchSpec, RunPaths
from hpcft.worker import device as dev
from hpcft.worker.console import error, log, warn
from hpcft.worker.progress import ProgressWriter
from hpcft.worker.ranklog import setup_rank_logs
from hpcft.worker.taskenv import TaskEnv, current, npu_env
from hpcft.worker.timelimit import install_signal_handler

# Factories of extra TrainerCallbacks every built-in task adds (plugins; the tests' fault
# injector in devtools/ registers one). Each is called with the task's Context.
EXTRA_CALLBACKS: list[Callable[["Context"], Any]] = []


def process_start_time() -> float:
    """When this process started (Linux /proc), so 'time to first step' includes interpreter start."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        btime = next(int(ln.split()[1]) for ln in Path("/proc/stat").read_text().splitlines()
                     if ln.startswith("btime"))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


# --------------------------------------------------------------------------- environment

def apply_env(spec: LaunchSpec) -> None:
    """The job's environment, exactly as the batch script exports it (the local executor and
    a standalone run have no script), before anything imports an HF library."""
    env = dict(spec.env)
    env["PYTHONPATH"] = join_paths(env.get("PYTHONPATH"), os.environ.get("PYTHONPATH"))
    os.environ.update(env)
    os.environ.update(OFFLINE_FLAGS)  # never online on a compute node, whatever the job says
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # transformers/accelerate probe deepspeed; tell it the device instead of letting it guess (and warn)
    os.environ.setdefault("DS_ACCELERATOR", dev.ds_accelerator(spec.device))
    if "huggingface_hub.constants" in sys.modules:  # it reads HF_HUB_OFFLINE once, at import
        sys.modules["huggingface_hub.constants"].HF_HUB_OFFLINE = True
    ensure_runtime()


def ops_cache_dir(env: Optional[dict] = None) -> Optional[str]:
    """Where compiled torch/DeepSpeed ops go: the user's own run-time folder
    (``$HPCFT_RUNTIME/torch_extensions``, private), so the 33-70 s first-use build of DeepSpeed's
    ops is paid once per user, not by every job. Never a shared folder: a compiled op is a shared
    object the job loads, so one another user could write would be their code in your job."""
    env = os.environ if env is None else env
    runtime = env.get("HPCFT_RUNTIME")
    return str(Path(runtime) / "torch_extensions") if runtime else None


def ensure_runtime() -> None:
    """The user's run-time caches (HF_DATASETS_CACHE, HF_MODULES_CACHE, ...) live under
    ``$HPCFT_RUNTIME``: create it 0700 and refuse one that is not the user's own."""
    runtime = os.environ.get("HPCFT_RUNTIME")
    if runtime:
        try:
            ensure_private(Path(runtime))
        except OSError as exc:
            raise TrustError(f"{exc}; set HPCFT_HOME to a folder of your own") from None


def prepare_task(spec: LaunchSpec) -> TaskEnv:
    """Per task, before anything heavy: its identity, its own log file, its rendezvous
    variables, its devices, and the compiled-ops cache."""
    task = current(default_world=spec.world_size)
    setup_rank_logs(spec.paths, task)
    if spec.kind == "script" or task.world_size > 1:
        os.environ.update(task.dist_env())  # one-process train jobs stay out of torch.distributed
    ops = ops_cache_dir()
    if ops and "TORCH_EXTENSIONS_DIR" not in os.environ:
        try:
            Path(ops).mkdir(parents=True, exist_ok=True)
            os.environ["TORCH_EXTENSIONS_DIR"] = ops
        except OSError as exc:
            log(f"note: compiled-ops cache {ops} not writable ({exc.strerror}); torch uses ~/.cache")
    if spec.device == "npu":
        os.environ.update(npu_env())
    return task


# --------------------------------------------------------------------------- a task's context

@dataclass
class Context:
    spec: LaunchSpec
    task: TaskEnv
    job: Job
    writer: ProgressWriter
    restart: int
    device: str                              # the kind this task really uses
    assets: list[JobAsset] = field(default_factory=list)
    process_start: float = field(default_factory=time.time)

    @property
    def paths(self) -> RunPaths:
        return self.spec.paths

    @property
    def base_dir(self) -> Path:
        return Path(self.spec.base_dir)

    @property
    def output_dir(self) -> Path:
        return Path(self.spec.output_dir)


def status(paths: RunPaths, state: str, **extra: Any) -> None:
    try:
        atomic_write_json(paths.status, {"state": state, "time": time.time(), **extra})
    except OSError as exc:  # status.json is a convenience; training goes on, but say so
        warn(f"cannot write {paths.status}: {exc}")


def _fail(paths: RunPaths, writer: ProgressWriter, message: str) -> None:
    for line in message.splitlines():
        error(line)
    writer.write("failed", error=message)
    status(paths, "FAILED", error=message)


def load_job(paths: RunPaths) -> Job:
    import yaml

    return Job.model_validate(yaml.safe_load(paths.job_yaml.read_text(encoding="utf-8")))


def start(spec: LaunchSpec, task: TaskEnv, process_start: float) -> Context | dict:
    """Everything before the task's heavy imports. Returns the finished metrics instead when
    this run already completed (a requeue after the end)."""
    from hpcft.core.config import load_settings
    from hpcft.core.resolve import load_table
    from hpcft.core.store import Cache, admin_uids

    paths = spec.paths
    writer = ProgressWriter(paths.progress, enabled=task.is_main)
    try:
        kind = dev.kind_for(spec.device)
    except Exception as exc:
        _fail(paths, writer, str(exc))
        raise
    if kind != spec.device:
        os.environ["DS_ACCELERATOR"] = dev.ds_accelerator(kind)
    done = read_json(paths.metrics)
    if isinstance(done, dict) and done.get("completed"):
        log(f"this run already finished ({paths.metrics}); nothing to do")
        return done
    job = load_job(paths)
    settings = load_settings()
    table = load_table(settings)
    found = job_assets(job, Cache(Path(os.environ.get("HPCFT_CACHE") or settings.cache), admin_uids(settings)),
                       table, Path(spec.base_dir))
    try:
        require(found, table)
    except Exception as exc:
        _fail(paths, writer, str(exc))
        raise
    restart = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    install_signal_handler()
    status(paths, "RUNNING", restart=restart)
    return Context(spec, task, job, writer, restart, kind, found, process_start)


def run_guarded(ctx: Context, fn: Callable[[Context], dict]) -> dict:
    """Run a task; any failure is logged, recorded in progress.jsonl and status.json, re-raised."""
    try:
        return fn(ctx)
    except BaseException as exc:
        if not isinstance(exc, SystemExit):
            msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            error(f"training failed: {type(exc).__name__}: {msg}")
            ctx.writer.write("failed", error=f"{type(exc).__name__}: {exc}")
            status(ctx.paths, "FAILED", error=f"{type(exc).__name__}: {exc}")
        raise
