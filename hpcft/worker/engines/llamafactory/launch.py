"""``llamafactory-cli train`` as the job's one launcher per node: its environment from Slurm (as
:mod:`hpcft.worker.taskenv` reads it) and the child process, stopped on the time-limit signal.

LLaMA-Factory's launcher starts ``torchrun --nnodes NNODES --node_rank NODE_RANK
--nproc_per_node NPROC_PER_NODE --master_addr MASTER_ADDR --master_port MASTER_PORT`` when
``FORCE_TORCHRUN=1``; so Slurm runs one task per node (render.py) and torchrun the ranks, never a
torchrun per device inside an srun per device.

The time-limit signal: the worker forwards it to the ranks as a stop file (``HPCFT_LF_STOP_FILE``,
beside the resolved YAML; torchrun's ranks are in sessions of their own), and the ranks save a
checkpoint at the end of the step in progress and exit (``child/hpcft_lf_stop.py``). The worker
waits for that until shortly before the job's end time; only then it stops LLaMA-Factory."""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Mapping, Optional

from hpcft.core.atomic import atomic_write_text
from hpcft.worker.console import log
from hpcft.worker.taskenv import TaskEnv, scontrol_job

# what hpcft's worker exported for its own ranks; torchrun sets each rank's own
_RANK_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK")
# LLaMA-Factory reads these to pick a hub; the node is offline and the paths are staged
_HUB_SWITCHES = ("USE_MODELSCOPE_HUB", "USE_OPENMIND_HUB")
STOP_FILE_ENV = "HPCFT_LF_STOP_FILE"   # child/hpcft_lf_stop.py reads it
STOP_FILE = "stop"                     # beside the resolved YAML
# after the signal: LLaMA-Factory's save-and-stop may last until this long before the job's end
# (the requeue's margin), or this long when Slurm does not say when the job ends
END_MARGIN_S = 15.0
DEFAULT_GRACE_S = 90.0


def launch_env(task: TaskEnv, nproc_per_node: int, base: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """The child's environment: this process's (the offline flags, caches, the job's vars) with the
    launcher's rendezvous. ``task`` is this node's one Slurm task: its rank is the node's rank."""
    env = dict(os.environ if base is None else base)
    for name in (*_RANK_VARS, *_HUB_SWITCHES):
        env.pop(name, None)
    env.update({
        "FORCE_TORCHRUN": "1",
        "NNODES": str(task.nodes),
        "NODE_RANK": str(task.rank),
        "NPROC_PER_NODE": str(max(1, nproc_per_node)),
        "MASTER_ADDR": task.master_addr,
        "MASTER_PORT": str(task.master_port),
    })
    env["PYTHONPATH"] = child_pythonpath(env.get("PYTHONPATH", ""))
    # torchrun is found on PATH: the job's interpreter's own folder first (a venv that is not activated)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bindir, *[p for p in env.get("PATH", "").split(os.pathsep) if p and p != bindir]])
    return env


def child_pythonpath(pythonpath: str) -> str:
    """``PYTHONPATH`` with this room's ``child/`` folder (its sitecustomize) right after hpcft's
    offline shim, which chains to it; it chains on to the job's own entries."""
    from hpcft.core.offline import join_paths, shim_path

    child = str(Path(__file__).resolve().parent / "child")
    parts = [p for p in pythonpath.split(os.pathsep) if p and p != child]
    at = parts.index(shim_path()) + 1 if shim_path() in parts else 0
    return join_paths(*parts[:at], child, *parts[at:])


def cli() -> list[str]:
    """``llamafactory-cli`` of the job's interpreter (its venv's script), else the module."""
    script = Path(sys.executable).parent / "llamafactory-cli"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "llamafactory.cli"]


def grace_s(env: Optional[Mapping[str, str]] = None, scontrol: Callable[[str], str] = scontrol_job,
            now: Optional[dt.datetime] = None) -> float:
    """How long LLaMA-Factory may take to save and stop after the time-limit signal: until
    ``END_MARGIN_S`` before the job's ``EndTime`` (``scontrol show job``), at least 5 s;
    ``DEFAULT_GRACE_S`` outside Slurm or when the end time is unknown."""
    job_id = (os.environ if env is None else env).get("SLURM_JOB_ID")
    found = re.search(r"\bEndTime=(\S+)", scontrol(job_id)) if job_id else None
    try:
        end = dt.datetime.fromisoformat(found.group(1)) if found else None
    except ValueError:
        end = None
    if end is None:
        return DEFAULT_GRACE_S
    left = (end - (now or dt.datetime.now())).total_seconds()
    return max(5.0, left - END_MARGIN_S)


class Child:
    """The launcher in a session of its own, so a stop reaches torchrun and every rank."""

    def __init__(self, yaml_path: Path, env: dict[str, str]):
        # relative to its folder: LLaMA-Factory's launcher re-splits its arguments on spaces
        self.cmd = [*cli(), "train", yaml_path.name]
        self.stop_file = yaml_path.parent / STOP_FILE
        self.stop_file.unlink(missing_ok=True)   # the last leg's request
        env = {**env, STOP_FILE_ENV: str(self.stop_file)}
        self.proc = subprocess.Popen(self.cmd, cwd=str(yaml_path.parent), env=env, start_new_session=True)

    def wait(self, should_stop: Callable[[], bool], tick: Callable[[], None], interval: float = 1.0,
             grace: Callable[[], float] = grace_s) -> int:
        """Wait for the launcher, calling ``tick`` each ``interval``. Once ``should_stop``, ask the
        ranks to save and stop (:meth:`request_stop`), and stop the launcher if they have not
        ended within ``grace()`` seconds."""
        deadline: Optional[float] = None
        while True:
            try:
                code = self.proc.wait(timeout=interval)
            except subprocess.TimeoutExpired:
                tick()
                if deadline is None and should_stop():
                    wait_s = grace()
                    self.request_stop(wait_s)
                    deadline = time.monotonic() + wait_s
                elif deadline is not None and time.monotonic() >= deadline:
                    log("LLaMA-Factory did not save and stop in time; stopping it (the requeued job resumes "
                        "from the last complete checkpoint)")
                    return self.stop()
                continue
            tick()
            return code

    def request_stop(self, wait_s: float) -> None:
        """The time-limit signal, forwarded: every rank saves at the end of its step, then exits."""
        atomic_write_text(self.stop_file, f"{time.time():.3f}\n", durable=False)
        log(f"time-limit signal forwarded to LLaMA-Factory: it saves a checkpoint at the end of the step in "
            f"progress and stops (waiting at most {wait_s:.0f} s)")

    def stop(self, grace_s: float = 30.0) -> int:
        """SIGTERM to the launcher's whole session (torchrun forwards it to the ranks), then SIGKILL."""
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait_s
            while self.proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
        return self.proc.wait()
