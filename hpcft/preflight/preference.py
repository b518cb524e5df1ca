"""The preference-tuning pre-flight rule (``task: dpo``, ``orpo``, ``simpo``, ``kto``): before
anything is queued,

* ``train.init_from`` names a finished hpcft LLM run, trained on the same model, with an
  adapter only where this job trains one; the reference is replaced by that run's folder in the
  job, so the run folder's ``job.yaml`` records which run it continued and the worker gets a
  path. References resolve as :mod:`hpcft.runs.ref` resolves a run (folder, run id or unique
  prefix, Slurm job id, job name), minus sweeps (a sweep is not one run); ref itself is not
  imported here: it loads sweeps through the submit pipeline, which runs these rules;
* the first rows of a local data file are preference rows (:mod:`hpcft.core.pref_rows`), each
  problem one line naming the row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

import yaml

from ..core.atomic import read_json
from ..core.errors import NotFoundError
from ..core.job import Job
from ..core.pref_rows import sample_problems
from ..core.rundir import RunPaths
from ..runs.index import RunRecord, RunStore
from .checks import Check, Preflight

NAME = "preference"


def preference(p: Preflight) -> Iterator[Check]:
    """One check per preference job (each sweep point), passing or naming every problem."""
    for job in p.jobs:
        t = job.train
        if t is None or not t.is_preference:
            continue
        problems = [*_init_from(job, p), *_data(job, p.base_dir)]
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
        record = find_run(RunStore(p.settings.runs), t.init_from)
    except NotFoundError as exc:
        return [f"train.init_from {t.init_from!r}: {exc}"]
    paths = RunPaths(record.run_dir)
    metrics = read_json(paths.metrics) or {}
    what = f"train.init_from {t.init_from!r} (run {record.run_id})"
    if not metrics.get("completed"):
        return [f"{what} has not finished (state {record.state}); wait for it or name a finished run"]
    task = metrics.get("task")
    if task not in ("causal-lm", "dpo", "orpo", "simpo", "kto"):
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


def find_run(store: RunStore, ref: str) -> RunRecord:
    """The run ``ref`` names: a run folder, a run id, a Slurm job id, a unique prefix of a run
    id, a job name (its latest run); else a NotFoundError (a prefix of several lists them)."""
    if RunPaths(Path(ref).expanduser()).record.is_file():
        return store.load(Path(ref).expanduser())
    newest = store.entries()[::-1]
    if not newest:
        raise NotFoundError(f"no runs yet under {store.root}; submit the SFT job first")
    for key in ("run_id", "job_id"):
        for e in newest:
            if str(e.get(key) or "") == ref:
                return store.load(Path(e["run_dir"]))
    prefixed = [e for e in newest if e["run_id"].startswith(ref)]
    if len(prefixed) == 1:
        return store.load(Path(prefixed[0]["run_dir"]))
    named = next((e for e in newest if e.get("name") == ref), None)
    if named is not None:
        return store.load(Path(named["run_dir"]))
    if prefixed:
        raise NotFoundError(f"'{ref}' matches several runs: {', '.join(e['run_id'] for e in prefixed[:10])}; "
                            "give more of the id (see: hpcft runs)")
    raise NotFoundError(f"no run or job '{ref}' (see: hpcft runs)")


def _data(job: Job, base_dir: Path) -> list[str]:
    """The first rows of a local .jsonl/.json data file (hub datasets are checked by the worker)."""
    t = job.train
    name: Optional[str] = t.dataset if isinstance(t.dataset, str) else None
    if name is None:
        return []
    path = Path(name).expanduser()
    path = path if path.is_absolute() else base_dir / path
    return sample_problems(path, t.task)
