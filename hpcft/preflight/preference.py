"""The preference-tuning pre-flight rule (``task: dpo``, ``orpo``, ``simpo``, ``kto``): before
anything is queued,

* ``train.init_from`` names a finished hpcft LLM run, trained on the same model, with an
  adapter only where this job trains one; the reference is replaced by that run's folder in the
  job, so the run folder's ``job.yaml`` records which run it continued and the worker gets a
  path. The reference is any that names one run (:func:`hpcft.runs.ref.resolve_run`: a folder,
  a run id or unique prefix, a Slurm job id, a job name; a sweep only when it has one run);
* the first rows of a local data file are preference rows (:mod:`hpcft.core.pref_rows`) that
  the model's chat template renders as the worker renders them, each problem one line naming
  the row.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Optional

import yaml

from ..core.atomic import read_json
from ..core.errors import NotFoundError
from ..core.job import Job
from ..core.pref_rows import sample_problems, template_problems
from ..core.rundir import RunPaths
from ..runs.index import RunStore
from ..runs.ref import resolve_run
from .checks import Check, Preflight
from .sft_data import _template

NAME = "preference"


def preference(p: Preflight) -> Iterator[Check]:
    """One check per preference job (each sweep point), passing or naming every problem."""
    for job in p.jobs:
        t = job.train
        if t is None or not t.is_preference:
            continue
        problems = [*_init_from(job, p), *_data(job, p)]
        if problems:
            yield Check(NAME, False, "; ".join(problems))
        else:
            note = f"continues run {Path(t.init_from).name}" if t.init_from else "starts from the model"
            yield Check(NAME, True, f"task {t.task}, {note}")


def _init_from(job: Job, p: Preflight) -> list[str]:
    t = job.train
    if not t.init_from:
        return []
    try:
        record = resolve_run(RunStore(p.settings.runs), os.path.expanduser(t.init_from))
    except NotFoundError as exc:
        return [f"train.init_from {t.init_from!r}: {exc}"]
    paths = RunPaths(record.run_dir)
    metrics = read_json(paths.metrics) or {}
    what = f"train.init_from {t.init_from!r} (run {record.run_id})"
    if not metrics.get("completed"):
        return [f"{what} has not finished (state {record.state}); wait for it or name a finished run"]
    task = metrics.get("task")
    if task not in ("causal-lm", "dpo", "orpo", "simpo", "kto", "grpo"):
        return [f"{what} is a {task or 'sequence-classification'} run; init_from continues an LLM run "
                "(task: causal-lm, the SFT stage)"]
    out = Path(str(metrics.get("output_dir") or ""))
    if not out.is_dir():
        return [f"{what}: its model folder {out} is gone"]
    problems = []
    if metrics.get("adapter") and t.llm_method == "full":
        problems.append(f"{what} trained a LoRA adapter; use method: lora to keep training it, or merge it "
                        "(hpcft export --merge) and name the merged folder as train.model")
    try:
        sft = (yaml.safe_load(paths.job_yaml.read_text(encoding="utf-8")) or {}).get("train") or {}
    except (OSError, yaml.YAMLError):
        sft = {}
    if sft.get("model") and sft["model"] != t.model:
        problems.append(f"{what} fine-tuned {sft['model']!r}, this job names {t.model!r}; name the same model")
    if not problems:
        t.init_from = str(Path(record.run_dir).resolve())  # recorded in the run's job.yaml; the worker reads it
    return problems


def _data(job: Job, p: Preflight) -> list[str]:
    """The first rows of a local .jsonl/.json data file (hub datasets are checked by the worker):
    preference rows, and, when the model is staged with a chat template, rows that template can
    render as the worker renders them (Gemma-2's refuses a system turn)."""
    t = job.train
    name: Optional[str] = t.dataset if isinstance(t.dataset, str) else None
    if name is None:
        return []
    path = Path(name).expanduser()
    path = path if path.is_absolute() else p.base_dir / path
    problems = sample_problems(path, t.task)
    template = _template(job, p) if path.is_file() else None
    if template is not None:
        problems += template_problems(path, template, t.task, system=t.system_prompt,
                                      enable_thinking=t.enable_thinking)
    return problems
