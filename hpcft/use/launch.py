"""Using a trained run's model from the login side: ``hpcft predict`` and ``hpcft serve``.

The model code lives in the worker (:mod:`hpcft.worker.after_training.predict`, :mod:`hpcft.worker.serving.demo`); the
login side never imports it (nor torch). It either starts it as a subprocess here, on the login
node's CPU, with the offline environment, or submits it as a one-task Slurm job on the run's
partition: a script rendered from the run's own job (same environment, modules, devices, offline
variables; ``templates/aux.sbatch.j2``) whose log and outputs go into the run folder.
"""

from __future__ import annotations

import datetime as _dt
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..cluster import slurm
from ..core.atomic import atomic_write_text, read_json
from ..core.config import Settings
from ..core.errors import ConfigError, HpcftError, NotFoundError
from ..core.offline import OFFLINE_FLAGS, offline_env
from ..core.rundir import LaunchSpec, RunPaths
from ..runs.index import RunRecord
from ..submit.render import ScriptPlan, make_plan, q, template_environment
from .delegated import refusal


@dataclass
class RunModel:
    """A run's saved model and what the worker needs to use it."""

    record: RunRecord
    paths: RunPaths
    model_dir: Path
    kind: str                     # the task's kind: train | script
    text_columns: list[str]
    device: str                   # gpu | npu | cpu: the run's device (used with --submit)
    task: str = ""                # metrics.json's task (causal-lm, ...); "" for a classifier
    base_model: Optional[Path] = None   # a LoRA run: the base model its adapter goes on

    @property
    def generative(self) -> bool:
        return bool(self.task) and self.task != "classification"


def run_model(record: RunRecord, best: bool = False, adapter_ok: bool = False) -> RunModel:
    """The run's saved model; a LoRA adapter (no config.json of its own) only with ``adapter_ok``."""
    paths = RunPaths(record.run_dir)
    metrics = read_json(paths.metrics) or {}
    try:
        spec = LaunchSpec.read(paths.dir)
        out, device = Path(spec.output_dir), spec.device
    except (OSError, ValueError, TypeError):
        out, device = paths.output, "cpu"
    if metrics.get("output_dir"):
        out = Path(metrics["output_dir"])
    why = refusal(metrics, record.run_id)   # a delegated run whose LLaMA-Factory output is no causal LM
    if why:
        raise ConfigError([why])
    model_dir = out / "best" if best else out
    if (model_dir / "adapter_config.json").is_file() and not (model_dir / "config.json").is_file() \
            and not adapter_ok:
        raise NotFoundError(f"run {record.run_id} holds a LoRA adapter ({model_dir}), not a full model: "
                            f"hpcft serve {record.run_id} --api serves it as it is, or hpcft export --merge writes "
                            "a full model")
    if not any((model_dir / f).is_file() for f in ("config.json", "adapter_config.json")):
        if best:
            raise NotFoundError(f"run {record.run_id} has no best model ({model_dir}); it is saved with "
                                "train.save_best: true. Use the final model (without --best)")
        raise NotFoundError(f"run {record.run_id} has no saved model in {model_dir} (state {record.state}); "
                            "predict and serve use a finished run (see: hpcft status)")
    base = metrics.get("base_model") if metrics.get("adapter") else None
    return RunModel(record, paths, model_dir, record.kind, list(metrics.get("text_columns") or []), device,
                    str(metrics.get("task") or ""), Path(base) if base else None)


# --------------------------------------------------------------------------- on the login node

def local_env(settings: Settings, threads: Optional[int] = None) -> dict[str, str]:
    """The subprocess's environment: this one, made offline, pointed at the hpcft cache."""
    env = dict(os.environ)
    off = offline_env(settings.cache, os.environ.get("PYTHONPATH"))
    env.update(off)
    env.update(OFFLINE_FLAGS)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["GRADIO_ANALYTICS_ENABLED"] = "False"
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def require_local_torch(command: str) -> None:
    """The login node's Python must have torch and transformers to run the model here."""
    missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
    if missing:
        raise HpcftError(f"hpcft {command} on the login node needs {' and '.join(missing)} in {sys.executable}: "
                         "pip install 'hpcft[train]', or run it on a compute node with --submit")


def worker_argv(module: str, args: list[str], python: Optional[str] = None) -> list[str]:
    return [python or sys.executable, "-u", "-m", f"hpcft.worker.{module}", *args]


# --------------------------------------------------------------------------- as a Slurm job

@dataclass
class AuxPlan(ScriptPlan):
    """The run's own script plan, for a one-task helper job (predict, serve) whose log goes
    into ``log_dir``; no requeue signal (nothing to checkpoint)."""

    aux: str = "predict"

    def sbatch_options(self):
        opts = dict(super().sbatch_options())
        for key in ("signal", "open-mode"):
            opts.pop(key, None)
        log_dir = Path(self.log_dir or self.run_dir)
        opts["output"] = str(log_dir / f"{self.aux}.%j.out")
        opts["error"] = str(log_dir / f"{self.aux}.%j.err")
        return sorted(opts.items())


@dataclass
class AuxJob:
    job_id: str
    script: Path
    log: Path
    err: Path


def run_home(record: RunRecord) -> RunModel:
    """A run as the home of a helper job that needs no model from it (``hpcft tensorboard --submit``)."""
    paths = RunPaths(record.run_dir)
    return RunModel(record, paths, paths.dir, record.kind, [], "cpu")


def _loaded_job(model: RunModel, aux: str, time: str, devices: int = 1, env: Optional[dict] = None):
    """The run's resolved job, narrowed to one task with ``devices`` devices of the run's kind
    (none with 0), in the run's environment or in ``env`` (``{"venv": DIR}`` or ``{"conda": NAME}``:
    a serving env beside the training one, as vLLM's pins often need)."""
    import yaml

    from ..core.job import Job
    from ..core.job_load import LoadedJob

    try:
        data = yaml.safe_load(model.paths.job_yaml.read_text(encoding="utf-8"))
        job = Job.model_validate(data)
    except (OSError, ValueError) as exc:
        raise ConfigError([f"{model.paths.job_yaml}: cannot read the run's job: {exc}"]) from None
    r = job.resources
    devices = int(devices)
    res = r.model_copy(update={"nodes": 1, "time": time, "exclusive": False,
                               "gpus_per_node": devices if r.gpus_per_node and devices else None,
                               "npus_per_node": devices if r.npus_per_node and devices else None})
    update = {"name": f"{job.name}-{aux}", "resources": res}
    if env:
        from ..core.job import EnvSpec

        try:
            update["env"] = EnvSpec.model_validate({**job.env.model_dump(exclude={"conda", "venv", "python"}),
                                                    **env})
        except ValueError as exc:
            raise ConfigError([f"the serving environment {env}: {exc}"]) from None
    job = job.model_copy(update=update)
    try:
        base = Path(LaunchSpec.read(model.paths.dir).base_dir)
    except (OSError, ValueError, TypeError):
        base = model.paths.dir
    return LoadedJob(job, None, data, base)


def submit_aux(model: RunModel, settings: Settings, aux: str, module: str, args: list[str],
               time: str, log_dir: Path, devices: int = 1, env: Optional[dict] = None) -> AuxJob:
    """Render and sbatch a one-task job that runs ``python -m hpcft.worker.<module> ARGS``."""
    loaded = _loaded_job(model, aux, time, devices, env)
    from ..preflight.requirements import aux_problems

    problems = aux_problems(loaded.job, loaded.base_dir, aux, args)   # before anything is written or queued
    if problems:
        raise ConfigError(problems)
    base = make_plan(loaded, settings, model.paths.dir, model.record.partition)
    fields = {k: getattr(base, k) for k in base.__dataclass_fields__ if k != "log_dir"}
    plan = AuxPlan(**fields, aux=aux, log_dir=str(log_dir))
    argv = worker_argv(module, args, python=plan.python)
    command = " ".join(q(a) for a in argv)
    parent = f"{loaded.job.resources.device}.sbatch.j2"
    text = template_environment(settings).get_template("aux.sbatch.j2").render(
        parent=parent, plan=plan, job=loaded.job, settings=settings, version=_version(), aux=aux,
        job_file=str(model.paths.job_yaml), command=command)
    log_dir.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    script = atomic_write_text(log_dir / f"{aux}-{stamp}.sh", text, mode=0o755)
    job_id = slurm.sbatch(str(script))
    return AuxJob(job_id, script, log_dir / f"{aux}.{job_id}.out", log_dir / f"{aux}.{job_id}.err")


def _version() -> str:
    from .. import __version__

    return __version__
