"""The ``task: grpo`` settings (online RL with verifiable rewards on TRL's ``GRPOTrainer``): the
``grpo:`` block, with TRL's own defaults, and ``rewards:``, checked the same way on both sides.

    train:
      task: grpo
      init_from: my-sft-run              # an SFT, DPO or GRPO run (optional)
      grpo: {num_generations: 8, max_completion_length: 512, beta: 0.0}
      rewards:
        - answer_numeric                 # a built-in (hpcft.core.rewards.BUILTIN)
        - {name: think_format, weight: 0.5}
        - {function: rewards.py:my_reward, sha256: 9c7b...}   # the user's own, pinned if wanted

A user's reward file is Python that runs inside the job. The pre-flight lists its sha256, records
it in the run's job.yaml (a pinned ``sha256`` that differs is refused at submit), and the worker
runs exactly the bytes whose hash matches what was recorded (a file changed after submit is
refused there). Pure Python; pydantic only.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, ClassVar, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .rewards import BUILTIN

_FUNCTION = re.compile(r"^(?P<file>[^:\x00-\x1f]+\.py):(?P<name>[A-Za-z_][A-Za-z0-9_]*)$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
GRPO_FIELDS = ("grpo", "rewards")


class GrpoSpec(BaseModel):
    """TRL's ``GRPOConfig`` names and defaults (trl 1.16)."""

    model_config = ConfigDict(extra="forbid")

    num_generations: int = Field(8, ge=2)             # completions per prompt; divides the generation batch
    max_completion_length: int = Field(512, ge=1, le=32768)
    beta: float = Field(0.0, ge=0)                    # KL coefficient; 0: no reference model
    loss_type: str = "dapo"
    temperature: float = Field(1.0, gt=0)
    use_vllm: bool = False                            # colocated vLLM (vllm_mode="colocate") where the env has it

    LOSSES: ClassVar[tuple] = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo")

    @field_validator("loss_type")
    @classmethod
    def _loss(cls, v: str) -> str:
        if v not in cls.LOSSES:
            near = difflib.get_close_matches(v, cls.LOSSES, 1)
            raise ValueError(f"{v!r} is not a GRPO loss{f' (did you mean {near[0]!r}?)' if near else ''}; "
                             f"one of {', '.join(cls.LOSSES)}")
        return v


class RewardSpec(BaseModel):
    """One reward: a built-in ``name`` or a user's ``function`` (``file.py:function``), and its weight."""

    model_config = ConfigDict(extra="forbid")

    name: Optional[str] = None
    function: Optional[str] = None
    weight: float = 1.0
    sha256: Optional[str] = None     # the file's, pinned by the user or recorded at submit

    @model_validator(mode="before")
    @classmethod
    def _short(cls, v: Any) -> Any:
        if isinstance(v, str):
            return {"function": v} if _FUNCTION.match(v.strip()) else {"name": v}
        return v

    @model_validator(mode="after")
    def _one(self) -> "RewardSpec":
        if (self.name is None) == (self.function is None):
            raise ValueError("each reward is a built-in name or a function (file.py:function), one of the two")
        if self.name is not None and self.name not in BUILTIN:
            near = difflib.get_close_matches(self.name, list(BUILTIN), 1)
            raise ValueError(f"unknown reward {self.name!r}{f' (did you mean {near[0]!r}?)' if near else ''}; "
                             f"built-in: {', '.join(BUILTIN)}, or a function of your own as file.py:function")
        if self.function is not None and not _FUNCTION.match(self.function):
            raise ValueError(f"function {self.function!r}: expected file.py:function_name")
        if self.name is not None and self.sha256 is not None:
            raise ValueError(f"sha256 pins a reward file; the built-in {self.name!r} has none")
        if self.sha256 is not None and not _SHA256.match(self.sha256):
            raise ValueError("sha256: 64 lower-case hex digits, as hpcft check prints them")
        return self

    @property
    def file(self) -> Optional[str]:
        return _FUNCTION.match(self.function).group("file") if self.function else None

    @property
    def func_name(self) -> Optional[str]:
        return _FUNCTION.match(self.function).group("name") if self.function else None

    @property
    def label(self) -> str:
        """The reward's name in the metrics (``rewards/<label>/mean``)."""
        return self.name or self.func_name or "reward"


def check(t) -> None:
    """The GRPO part of a TrainSpec's validation (``t`` a TrainSpec); ValueError, one line."""
    if t.task != "grpo":
        wrong = [f for f in GRPO_FIELDS if getattr(t, f) is not None]
        if wrong:
            raise ValueError(f"{', '.join(wrong)}: only for task: grpo (this job's task is {t.task})")
        return
    if not t.rewards:
        raise ValueError(f"task: grpo needs rewards: (built-in: {', '.join(BUILTIN)}, or file.py:function)")
    labels = [r.label for r in t.rewards]
    dup = next((x for x in labels if labels.count(x) > 1), None)
    if dup:
        raise ValueError(f"rewards: {dup!r} is listed twice; list each reward once and weight it")
    if t.grpo is None:
        t.grpo = GrpoSpec()      # the run folder's job.yaml records the defaults used
    if t.grpo.max_completion_length >= t.max_seq_length:
        raise ValueError(f"grpo.max_completion_length {t.grpo.max_completion_length} leaves no room for the prompt "
                         f"within max_seq_length {t.max_seq_length}")


def batch_problem(t, world_size: int) -> Optional[str]:
    """TRL's rule: the generation batch (batch_size x ranks x gradient_accumulation completions per
    step) holds whole groups of ``num_generations``; so does the eval batch. None when it does."""
    g = t.grpo.num_generations
    gen = t.batch_size * world_size * t.gradient_accumulation
    if gen % g:
        fit = [n for n in range(2, gen + 1) if gen % n == 0]
        return (f"grpo.num_generations {g} does not divide the generation batch {gen} (batch_size {t.batch_size} x "
                f"{world_size} rank(s) x gradient_accumulation {t.gradient_accumulation}); "
                + (f"use num_generations {', '.join(map(str, fit[-3:]))} or " if fit else "")
                + f"a batch_size that is a multiple of {g}")
    ev = (t.eval_batch_size or t.batch_size) * world_size
    if ev % g:
        return (f"grpo.num_generations {g} does not divide the eval batch {ev} (eval_batch_size x ranks); "
                f"set eval_batch_size to a multiple of {g}")
    return None


def row_problem(row: dict, columns: set[str]) -> Optional[str]:
    """What is wrong with one GRPO row: a prompt (text or messages) or messages, and the columns."""
    prompt = row.get("prompt", row.get("messages"))
    if isinstance(prompt, str):
        if not prompt.strip():
            return "prompt is empty"
    elif isinstance(prompt, list) and prompt and all(isinstance(m, dict) and "role" in m for m in prompt):
        if not any(m["role"] == "user" for m in prompt):
            return "the messages have no user turn to answer"
    else:
        return "each row needs prompt (text or a list of {role, content}) or messages"
    missing = sorted(c for c in columns if c not in row)
    return f"no {', '.join(missing)} column, which the rewards read" if missing else None


def reward_columns(t) -> set[str]:
    return {c for r in t.rewards or [] if r.name for c in BUILTIN[r.name][1]}
