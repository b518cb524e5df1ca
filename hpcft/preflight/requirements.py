"""What each task needs in the job's environment, checked before anything is queued.

The environment is asked once (:class:`hpcft.preflight.checks.JobEnv`, by running its Python:
:mod:`hpcft.preflight.envprobe`). :data:`TABLE` lists, per task, the distributions it needs and
their floors (pyproject.toml's extras); the rule :func:`environment` checks a training job's
torch build against its device and the rows no other rule checks, and :func:`aux_problems`
checks a helper job (``serve``/``eval``/``predict``/``export --submit``) before its sbatch.

``HPCFT_ALLOW_CPU_TORCH=1`` accepts a CPU-only torch on a GPU or NPU job: for test clusters
whose accelerators are fake (devtools/cluster), where such jobs train on the CPU on purpose."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, Optional

from ..core.eval_tasks import version_tuple
from ..core.job import Job
from .checks import Check, JobEnv, Preflight, job_env
from .envprobe import describe

NAME = "environment"
ALLOW_CPU_TORCH = "HPCFT_ALLOW_CPU_TORCH"


@dataclass(frozen=True)
class Need:
    dist: str       # the distribution pip installs
    module: str     # its import name
    floor: str      # lowest supported version ("" any)
    extra: str      # the hpcft extra that installs it ("" none)
    checked_by: str = NAME   # the pre-flight rule whose line reports it

    def install(self, env: JobEnv) -> str:
        spec = f"{self.dist}>={self.floor}" if self.floor else self.dist
        via = f" (or 'hpcft[{self.extra}]')" if self.extra else ""
        return f"{env.python()} -m pip install '{spec}'{via}"


TRL = Need("trl", "trl", "1.16", "preference")
# what asks for it -> what it needs; checked_by: the rule that prints its line (one line per problem),
# with the floor that rule enforces
TABLE: dict[str, tuple[Need, ...]] = {
    "task: dpo/orpo/kto/simpo": (TRL,),
    "task: grpo": (TRL,),
    "task: llamafactory": (Need("llamafactory", "llamafactory", "0.9.5", "llamafactory"),),   # llamafactory-cli train
    "deepspeed (set, or the default on several GPUs/NPUs)": (Need("deepspeed", "deepspeed", "0.15.4", "deepspeed"),),
    "method: qlora": (Need("bitsandbytes", "bitsandbytes", "", "qlora", "qlora"),),
    "train.eval_tasks": (Need("lm-eval", "lm_eval", "0.4.10", "eval", "lm-eval"),),
    "report_to: tensorboard": (Need("tensorboard", "tensorboard", "", "tensorboard", "trackers"),),
    "report_to: swanlab": (Need("swanlab", "swanlab", "", "swanlab", "trackers"),),
    "grpo.use_vllm": (Need("vllm", "vllm", "", "", "grpo"),),
    "device: npu": (Need("torch-npu", "torch_npu", "", "npu", "torch_npu"),),
    "serve --submit": (Need("gradio", "gradio", "5", "serve"),),
    "serve --api --submit": (Need("fastapi", "fastapi", "0.110", "api"), Need("uvicorn", "uvicorn", "0.29", "api")),
    "eval --submit": (Need("lm-eval", "lm_eval", "0.4.10", "eval"),),
    "--backend vllm": (Need("vllm", "vllm", "", ""),),
}


def train_needs(job: Job) -> list[Need]:
    """The rows of :data:`TABLE` a training job asks for (every rule's, deduplicated)."""
    t = job.train
    if t is None:
        return []
    keys = []
    if t.is_preference:
        keys.append("task: dpo/orpo/kto/simpo")
    if t.task == "llamafactory":
        keys.append("task: llamafactory")
    if t.task == "grpo":
        keys.append("task: grpo")
        if t.grpo.use_vllm:
            keys.append("grpo.use_vllm")
    if _uses_deepspeed(job):
        keys.append("deepspeed (set, or the default on several GPUs/NPUs)")
    if t.is_llm and t.llm_method == "qlora":
        keys.append("method: qlora")
    if t.eval_tasks:
        keys.append("train.eval_tasks")
    keys += [f"report_to: {name}" for name in t.report_to if f"report_to: {name}" in TABLE]
    if job.resources.device == "npu":
        keys.append("device: npu")
    return list(dict.fromkeys(n for k in keys for n in TABLE[k]))


def aux_needs(aux: str, args: list[str]) -> list[Need]:
    """The rows a helper job asks for: ``aux`` is submit_aux's name, ``args`` the worker's."""
    keys = {"serve": ["serve --submit"], "serve-api": ["serve --api --submit"], "eval": ["eval --submit"]}.get(aux, [])
    if any(a == "--backend" and b == "vllm" for a, b in zip(args, args[1:])):
        keys.append("--backend vllm")
    return list(dict.fromkeys(n for k in keys for n in TABLE[k]))


def _uses_deepspeed(job: Job) -> bool:
    """As :func:`hpcft.core.dsconfig.resolve` decides (``auto``: placement decides later)."""
    t, r = job.train, job.resources
    ds = t.deepspeed
    if ds is False or ds == "auto":
        return False
    if ds is None or ds is True:
        return r.world_size > 1 and not (ds is None and r.device == "cpu") and t.method != "qlora"
    return True


# --------------------------------------------------------------------------- the problems

def missing(env: JobEnv, needs: list[Need]) -> list[str]:
    """One phrase per need that ``env`` lacks or has below its floor."""
    out = []
    for n in needs:
        if not env.has(n.module):
            out.append(f"needs {n.dist} but {env.label} has none; install it there: {n.install(env)}")
        elif n.floor and (have := env.version(n.dist)) and version_tuple(have) < version_tuple(n.floor):
            out.append(f"needs {n.dist}>={n.floor} but {env.label} has {have}; upgrade it there: {n.install(env)}")
    return out


def torch_problem(env: JobEnv, device: str, what: str, npu: bool = True) -> Optional[str]:
    """Why ``env``'s torch cannot run a ``device`` job (``what`` names the job), or None.
    ``npu=False``: torch_npu is another rule's line (:func:`hpcft.preflight.checks.torch_npu`)."""
    info = env.torch()
    if info is None:
        return f"{what} needs torch but {env.label} has none; install it there: {env.python()} -m pip install " \
               f"'hpcft[{'npu' if device == 'npu' else 'train'}]'"
    if device == "cpu" or "__version__" not in info:  # not read: nothing to say before the node does
        return None
    if os.environ.get(ALLOW_CPU_TORCH) == "1":
        return None
    if device == "gpu" and not (info.get("cuda") or info.get("hip")):
        return (f"{what} runs on GPUs but {env.label} has {describe(info)}: install a CUDA build of torch in that "
                f"env ({env.python()} -m pip install torch --index-url https://download.pytorch.org/whl/cuXXX, "
                f"matching the nodes' driver) or choose an env that has one")
    if device == "npu" and npu and not info.get("npu"):
        return (f"{what} runs on NPUs but {env.label} has {describe(info)} and no torch_npu: install torch_npu "
                f"there ({env.python()} -m pip install 'hpcft[npu]', matching the nodes' CANN; see envs/npu.yml)")
    return None


def _where(env: JobEnv) -> str:
    if env.asked:
        return f"{env.label}, asked"
    return f"{env.label}, looked up by its files ({env.python()} cannot be run from here; the node checks again)"


# --------------------------------------------------------------------------- the rule and the helper jobs

def environment(p: Preflight) -> Iterator[Check]:
    """One line per distinct training environment: its torch build against the job's device,
    and the packages its task needs that no other rule reports."""
    seen: set[str] = set()
    for job in p.jobs:
        if job.train is None:
            continue
        needs = [n for n in train_needs(job) if n.checked_by == NAME]
        key = f"{job.env.model_dump_json()}|{job.resources.device}|{[n.dist for n in needs]}"
        if key in seen:
            continue
        seen.add(key)
        env = job_env(job, p.base_dir)
        if not env.visible:
            yield Check(NAME, True, f"{env.label} is not visible from here; checked again on the node")
            continue
        device = job.resources.device
        problems = [why] if (why := torch_problem(env, device, f"task: {job.train.task}", npu=False)) else []
        problems += [f"{_asker(job, n)} {line}" for n in needs for line in missing(env, [n])]
        for line in problems:  # one line each
            yield Check(NAME, False, line)
        if not problems:
            have = [describe(env.torch())] + [f"{n.dist} {env.version(n.dist) or '?'}" for n in needs]
            allowed = f" (allowed by {ALLOW_CPU_TORCH}=1)" if device != "cpu" and os.environ.get(ALLOW_CPU_TORCH) == "1" \
                else ""
            yield Check(NAME, True, f"{_where(env)}: {', '.join(have)}{allowed}")


def _asker(job: Job, need: Need) -> str:
    t = job.train
    if need.module == "trl":
        return f"task: {t.task}"
    if need.module == "llamafactory":
        return "engine: llamafactory (the delegated engine runs llamafactory-cli train in the job)"
    if need.module == "deepspeed":
        return "deepspeed" if t.deepspeed not in (None, True) else \
            f"deepspeed (the default for {job.resources.world_size} {job.resources.device.upper()}s)"
    return need.dist


def aux_problems(job: Job, base_dir, aux: str, args: list[str]) -> list[str]:
    """What stops helper job ``aux`` (its one-task job, its worker ``args``) in its environment:
    one line each, found before its sbatch. Nothing when the env is not visible from here."""
    if aux == "tensorboard":
        return []
    env = job_env(job, base_dir)
    if not env.visible:
        return []
    what = f"hpcft {aux.replace('-api', ' --api')} --submit"
    device = "cpu" if aux == "export" else job.resources.device   # the export worker merges on the CPU
    problems = [why] if (why := torch_problem(env, device, what)) else []
    return problems + [f"{what} {line}" for line in missing(env, aux_needs(aux, args))]
