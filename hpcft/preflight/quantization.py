"""The QLoRA pre-flight rule (:func:`qlora`, ``train.method: qlora``), before anything is queued:

* not on an NPU partition: bitsandbytes' released wheels have no Ascend backend
  (:data:`hpcft.core.quantization.NPU_REASON` says what a site would need);
* the staged model is not quantized already (its ``config.json`` ``quantization_config``);
* bitsandbytes is installed in the environment the job activates, where that is visible from
  here (looked up by name, never imported: the CLI does not import bitsandbytes or torch).

The memory estimate of a QLoRA job is the memory rule's (:mod:`hpcft.preflight.memcheck`,
4-bit weights in :mod:`hpcft.core.memory.estimate`).
"""

from __future__ import annotations

from typing import Iterator

from ..core.quantization import INSTALL, NPU_REASON, PACKAGE, compute_dtype, quantized_problem
from .checks import Check, Preflight, job_env

NAME = "qlora"


def qlora(p: Preflight) -> Iterator[Check]:
    """One check per distinct QLoRA job (each sweep point that differs), passing or naming every problem."""
    from ..core.assets import lookup
    from ..core.resolve import load_table
    from ..core.store import Cache

    seen: set[str] = set()
    for job in p.jobs:
        t = job.train
        if t is None or not t.is_llm or t.llm_method != "qlora":
            continue
        key = f"{t.model}|{t.quant.model_dump_json()}|{job.resources.device}|{job.env.model_dump_json()}"
        if key in seen:
            continue
        seen.add(key)
        problems = []
        if job.resources.device == "npu":
            where = f" '{p.partition}'" if p.partition else ""
            problems.append(f"method: qlora cannot run on the NPU partition{where}: {NPU_REASON}")
        model = lookup("model", t.model, Cache(p.settings.cache), load_table(p.settings), base_dir=p.base_dir)
        if model.found and (why := quantized_problem(model.path, t.model)):
            problems.append(why)
        env = job_env(job, p.base_dir)
        if env.visible and not env.has(PACKAGE):
            problems.append(f"method: qlora needs {PACKAGE} but {env.label} has none; install it there: "
                            f"{env.python()} -m {INSTALL}")
        if problems:
            yield Check(NAME, False, "; ".join(problems))
            continue
        precision = t.precision if t.precision != "auto" else ("fp32" if job.resources.device == "cpu" else "bf16")
        where = f"{PACKAGE} in {env.label}" if env.visible else f"{env.label} is not visible from here; " \
                                                                f"the worker checks {PACKAGE} on the node"
        yield Check(NAME, True, f"{t.quant.describe(compute_dtype(t.quant, precision))}; {where}")
