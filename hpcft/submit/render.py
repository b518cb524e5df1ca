"""Render the sbatch script for a job from the Jinja templates in ``templates/``.

The script is meant to be read by the user: sorted ``#SBATCH`` lines, commented
sections, and every user-supplied value shell-quoted (the ``q`` filter).
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import shlex
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .. import __version__
from ..core.config import Settings
from ..core.errors import ConfigError
from ..core.job_load import LoadedJob
from ..core.offline import offline_env, openmind_env
from ..core.rundir import LaunchSpec

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def builtin_templates_dir() -> Path:
    here = Path(__file__).resolve().parents[1]  # the hpcft package: templates/ in a wheel, beside it in a checkout
    for candidate in (here / "templates", here.parent / "templates"):
        if (candidate / "base.sbatch.j2").is_file():
            return candidate
    raise ConfigError([f"hpcft templates not found next to {here}; reinstall hpcft"])


def q(value: object) -> str:
    """Shell-quote anything that reaches the script."""
    return shlex.quote(str(value))


def comment(value: object) -> str:
    """Make a value safe inside a ``#`` comment line (no line breaks)."""
    return _CONTROL.sub("?", str(value))


@dataclass
class ScriptPlan:
    """Everything the templates need, computed once in Python."""

    loaded: LoadedJob
    settings: Settings
    run_dir: Path
    submitit_dir: Path
    python: str
    partition: Optional[str]
    created: str
    scow_dir: Optional[Path] = None  # SCOW placement: working directory, logs and script go here
    array: Optional[str] = None      # a sweep: "0-(N-1)%K", one array task per point
    log_dir: Optional[str] = None    # where job.<id>.out/err go (default: scow_dir, else run_dir)
    after: Optional[dict] = None     # sbatch options of a dependency (slurm.after_ok): its preprocess job

    @property
    def job(self):
        return self.loaded.job

    @property
    def ntasks_per_node(self) -> int:
        if self.job.train is not None and self.job.train.task == "llamafactory":
            return 1   # engine: llamafactory: one launcher per node, its torchrun starts the ranks
        return self.job.resources.tasks_per_node

    @property
    def workdir(self) -> Path:
        job = self.loaded.job
        if job.workdir:
            return self.loaded.path(job.workdir).resolve()
        if job.script:
            return self.loaded.script_path.parent
        return self.run_dir

    @property
    def output_dir(self) -> Path:
        if self.job.output_dir:
            return self.loaded.path(self.job.output_dir).resolve()
        return self.run_dir / "output"

    def gres(self) -> Optional[str]:
        r = self.job.resources
        if r.gpus_per_node:
            return self.settings.gpu_gres.format(n=r.gpus_per_node)
        if r.npus_per_node:
            return self.settings.npu_gres.format(n=r.npus_per_node)
        return None

    def sbatch_options(self) -> list[tuple[str, Optional[str]]]:
        """(option, value) pairs, sorted by option; values are raw (the template quotes)."""
        job, r, s = self.job, self.job.resources, self.settings
        log_dir = self.log_dir or str(self.scow_dir or self.run_dir)
        stem = "job.%A_%a" if self.array else "job.%j"  # array tasks: <array id>_<index>, as Slurm names them
        opts: dict[str, Optional[str]] = {
            "job-name": job.name,
            "nodes": str(r.nodes),
            "ntasks-per-node": str(self.ntasks_per_node),
            "time": _slurm_minutes(r.time_seconds),
            "output": f"{log_dir}/{stem}.out",
            "error": f"{log_dir}/{stem}.err",
            "open-mode": "append",  # keep the first run's log across requeues
            "signal": f"USR2@{s.signal_delay_s}",
            # SCOW: the portal's working directory; the worker still runs a script in its own workdir
            "chdir": str(self.scow_dir or self.workdir),
        }
        if self.array:
            opts["array"] = self.array
        if self.partition:
            opts["partition"] = self.partition
        if r.cpus_per_task:
            opts["cpus-per-task"] = str(r.cpus_per_task)
        if r.mem:
            opts["mem"] = r.mem
        account = r.account or s.account
        if account:
            opts["account"] = account
        qos = r.qos or s.qos
        if qos:
            opts["qos"] = qos
        if r.constraint:
            opts["constraint"] = r.constraint
        if r.exclusive:
            opts["exclusive"] = None
        gres = self.gres()
        if gres:
            opts["gres"] = gres
        for extra in r.sbatch:
            key, sep, value = extra[2:].partition("=")
            opts[key] = value if sep else None
        opts.update(self.after or {})
        return sorted(opts.items())

    def env(self) -> dict[str, str]:
        """The offline environment: flags, caches, and PYTHONPATH in its final order."""
        return offline_env(self.settings.cache, self.job.env.vars.get("PYTHONPATH"))

    def hpcft_env(self) -> dict[str, str]:
        env = {
            "HPCFT_RUN_DIR": str(self.run_dir),
            "HPCFT_OUTPUT_DIR": str(self.output_dir),
            "HPCFT_JOB_NAME": self.job.name,
        }
        if self.job.script:
            # where the staged assets a script job lists are (HPCFT_MODEL_PATH, ...)
            from ..core.assets import job_assets, script_env
            from ..core.resolve import load_table
            from ..core.store import Cache

            found = job_assets(self.job, Cache(self.settings.cache), load_table(self.settings),
                               self.loaded.base_dir)
            env.update(script_env(found))
            env.update(openmind_env(self.settings.cache, self.run_dir))
        return env

    def user_vars(self) -> dict[str, str]:
        """The job's own ``env.vars``; its PYTHONPATH is already part of :meth:`env`."""
        return {k: v for k, v in self.job.env.vars.items() if k != "PYTHONPATH"}

    def launch_spec(self) -> LaunchSpec:
        """What the worker reads on the node: the same environment the script exports."""
        job = self.job
        return LaunchSpec(
            kind=job.kind, run_dir=str(self.run_dir), workdir=str(self.workdir), output_dir=str(self.output_dir),
            base_dir=str(self.loaded.base_dir), device=job.resources.device, nodes=job.resources.nodes,
            tasks_per_node=self.ntasks_per_node, env={**self.env(), **self.hpcft_env(), **self.user_vars()},
            script=str(self.loaded.script_path) if job.script else None, args=list(job.args))


def _slurm_minutes(seconds: int) -> str:
    minutes = max(1, -(-seconds // 60))
    d, rem = divmod(minutes, 1440)
    h, m = divmod(rem, 60)
    return f"{d}-{h:02d}:{m:02d}:00" if d else f"{h:02d}:{m:02d}:00"


def make_plan(loaded: LoadedJob, settings: Settings, run_dir: Path, partition: Optional[str],
              python: Optional[str] = None, *, scow_dir: Optional[Path] = None, array: Optional[str] = None,
              log_dir: Optional[str] = None) -> ScriptPlan:
    import sys

    env = loaded.job.env
    if python is None:
        # inside an activated env, its own python; otherwise the interpreter running hpcft
        python = env.python or ("python" if (env.conda or env.venv) else sys.executable)
    return ScriptPlan(
        loaded=loaded, settings=settings, run_dir=run_dir, submitit_dir=run_dir / "submitit",
        python=python, partition=partition,
        created=_dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %z"),
        scow_dir=scow_dir, array=array, log_dir=log_dir,
    )


def template_environment(settings: Settings):
    import jinja2

    loaders = []
    if settings.templates_dir:
        loaders.append(jinja2.FileSystemLoader(str(Path(settings.templates_dir).expanduser())))
    loaders.append(jinja2.FileSystemLoader(str(builtin_templates_dir())))
    env = jinja2.Environment(loader=jinja2.ChoiceLoader(loaders), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True,
                             autoescape=False, bytecode_cache=_bytecode_cache(settings))
    env.filters["q"] = q
    env.filters["comment"] = comment
    return env


def _bytecode_cache(settings: Settings):
    """Templates compiled once, not on every call (compiling base.sbatch.j2 costs more than
    rendering it), in ``$HPCFT_HOME/.compiled-templates``: a ``0700`` folder of the user's own,
    as trusted as the run folders whose scripts Slurm runs. An entry is used only for the
    template text it was compiled from. None (compile every time) when HPCFT_HOME does not exist
    yet, or the folder is not the user's alone."""
    import jinja2

    class Cache(jinja2.FileSystemBytecodeCache):
        def dump_bytecode(self, bucket) -> None:
            try:
                super().dump_bytecode(bucket)
            except OSError:  # a full or read-only disk: the template was compiled, keep going
                pass

    folder = settings.home / ".compiled-templates"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(folder)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        return None
    return Cache(str(folder))


def submitit_command(plan: ScriptPlan) -> str:
    """The line submitit itself would have srun run (``python -u -m submitit.core._submit FOLDER``)."""
    return f"{q(plan.python)} -u -m submitit.core._submit {q(plan.submitit_dir)}"


def launch_command(plan: ScriptPlan) -> str:
    """The line srun runs in each task: :mod:`hpcft.worker.pickle_guard` with submitit's folder.
    It checks who could have written the job's pickle, then runs submitit's own launcher in the
    same process on the bytes it checked, which unpickle :class:`hpcft.entry.WorkerCall`."""
    return f"{q(plan.python)} -u -m hpcft.worker.pickle_guard {q(plan.submitit_dir)}"


def render_script(plan: ScriptPlan) -> str:
    """The sbatch script text, exactly what is submitted."""
    command = launch_command(plan)
    template = template_environment(plan.settings).get_template(f"{plan.job.resources.device}.sbatch.j2")
    job_file = str(plan.loaded.source) if plan.loaded.source else "<no file>"
    return template.render(plan=plan, job=plan.job, settings=plan.settings, version=__version__,
                           job_file=job_file, command=command)
