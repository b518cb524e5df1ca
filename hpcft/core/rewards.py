"""The built-in GRPO rewards (``train.rewards``), one float per completion, as TRL's
``GRPOTrainer`` calls a reward function: ``f(prompts, completions, completion_ids, **columns)``
where ``columns`` are the row's other columns, one value per completion. Pure Python (the
login side checks names against :data:`BUILTIN`; the worker calls them).

* ``answer_match``: 1.0 when the answer the completion gives equals the row's ``answer``
  (whitespace-trimmed, case kept), else 0.0;
* ``answer_numeric``: 1.0 when the last number of the completion's answer equals the row's
  (the part after ``####`` of a GSM8K answer, else its last number), as GSM8K graders score;
  thousands separators, ``$`` and a trailing ``.`` are ignored;
* ``think_format``: 1.0 when the completion is ``<think>...</think>`` followed by an answer
  (the reasoning template of Qwen3 and DeepSeek-R1), else 0.0;
* ``length_penalty``: ``-tokens / max_completion_length``, from 0 (empty) to -1 (the limit):
  weight it small, beside a reward for being right.

The answer a completion gives is the content of its last ``<answer>...</answer>``, else what
follows ``</think>``, else the whole completion.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Optional

_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_THINK = re.compile(r"^\s*<think>(.+?)</think>\s*(\S.*)$", re.DOTALL)


def text_of(completion: Any) -> str:
    """A completion as text: TRL passes a string, or (conversational data) a list of messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(str(m.get("content") or "") for m in completion if isinstance(m, dict))
    return str(completion or "")


def given_answer(text: str) -> str:
    tags = _ANSWER_TAG.findall(text)
    if tags:
        return tags[-1].strip()
    if "</think>" in text:
        return text.rsplit("</think>", 1)[1].strip()
    return text.strip()


def last_number(text: str) -> Optional[float]:
    """The last number in ``text`` (``1,234.50`` -> 1234.5, ``$7`` -> 7), or None."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    raw = found[-1].replace(",", "").replace("$", "").rstrip(".")
    try:
        return float(raw)
    except ValueError:
        return None


def reference_number(answer: Any) -> Optional[float]:
    """The row's answer as a number: a number, or the text after GSM8K's ``####``, else its last number."""
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        return float(answer)
    text = str(answer or "")
    return last_number(text.rsplit("####", 1)[1] if "####" in text else text)


def _answers(kw: dict, n: int) -> list[Any]:
    answers = kw.get("answer")
    if answers is None:
        raise KeyError("the answer rewards read each row's 'answer' column, and the rows have none")
    return list(answers) if len(answers) == n else [answers[0]] * n


def answer_match(completions: list, **kw) -> list[float]:
    answers = _answers(kw, len(completions))
    return [1.0 if given_answer(text_of(c)) == str(a).strip() else 0.0 for c, a in zip(completions, answers)]


def answer_numeric(completions: list, **kw) -> list[float]:
    out = []
    for c, a in zip(completions, _answers(kw, len(completions))):
        got, want = last_number(given_answer(text_of(c))), reference_number(a)
        out.append(1.0 if got is not None and want is not None and math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9)
                   else 0.0)
    return out


def think_format(completions: list, **kw) -> list[float]:
    return [1.0 if _THINK.match(text_of(c)) else 0.0 for c in completions]


def length_penalty(completions: list, completion_ids: Optional[list] = None, max_completion_length: int = 512,
                   **kw) -> list[float]:
    lengths = [len(ids) for ids in completion_ids] if completion_ids is not None else \
        [len(text_of(c).split()) for c in completions]
    return [-min(n, max_completion_length) / max(max_completion_length, 1) for n in lengths]


# name -> (function, the row columns it reads)
BUILTIN: dict[str, tuple[Callable[..., list[float]], tuple[str, ...]]] = {
    "answer_match": (answer_match, ("answer",)),
    "answer_numeric": (answer_numeric, ("answer",)),
    "think_format": (think_format, ()),
    "length_penalty": (length_penalty, ()),
}
