"""A delegated run's model (``engine: llamafactory``) for ``hpcft export``, ``eval``, ``serve`` and
``predict`` (login side, pure: no torch).

Its metrics.json says ``task``, ``base_model`` and ``adapter`` as a native LLM run's does
(hpcft/worker/engines/llamafactory/logs.py, ``model_fields``), so those commands take it as one:
a PEFT adapter in LLaMA-Factory's output_dir goes on the staged base model (the 4-bit base for a
QLoRA run, as hpcft's own QLoRA runs), a full or freeze run's output_dir is the whole model. What
LLaMA-Factory trained that is no causal LM, or no model at all, is refused here, one line naming why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

REWARD_MODEL = "reward-model"   # the worker's name for stage: rm (logs.REWARD_MODEL)
GENERATES = "stage: pt, sft, dpo, kto or ppo"


def refusal(metrics: dict, run_id: str) -> Optional[str]:
    """Why a delegated run's output cannot be exported, scored or served (None: it can, or the
    run is not a delegated one)."""
    if metrics.get("engine") != "llamafactory":
        return None
    stage = (metrics.get("llamafactory") or {}).get("stage") or "sft"
    if metrics.get("task") == REWARD_MODEL or stage == "rm":
        return (f"run {run_id} is LLaMA-Factory's stage: rm, a reward model (a value head that scores answers), "
                f"not a causal LM: hpcft export, eval and serve take a run that generates ({GENERATES})")
    if not metrics.get("task"):
        return (f"run {run_id} (engine: llamafactory) has no task, base model or adapter in its metrics.json "
                f"(it finished before hpcft recorded them); its LLaMA-Factory output is in {metrics.get('output_dir')}")
    out = Path(str(metrics.get("output_dir") or ""))
    if out.is_dir() and not any((out / f).is_file() for f in ("config.json", "adapter_config.json")):
        return (f"run {run_id}: LLaMA-Factory saved no model in {out} (neither config.json nor adapter_config.json; "
                "a YAML with do_train: false only predicts or evaluates)")
    return None
