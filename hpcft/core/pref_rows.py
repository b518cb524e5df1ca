"""Preference rows (``task: dpo``, ``orpo``, ``simpo``, ``kto``): what a row must hold, checked
the same way on both sides. The login side checks a sample of a local data file in the
pre-flight (:mod:`hpcft.preflight.preference`, so a bad file queues nothing); the worker checks
every row (:mod:`hpcft.worker.data.preference`). Pure Python, no third-party imports.

Rows, one JSON object each:

* pairwise (dpo, orpo, simpo): ``{prompt, chosen, rejected}``: strings, or the messages form:
  ``prompt`` a list of ``{role, content}`` ending with a user (or tool) turn, ``chosen`` and
  ``rejected`` an assistant message or a list whose last turn is the assistant's;
* kto: ``{prompt, completion, label}`` (``label`` true for a desirable completion, false for an
  undesirable one); pairwise rows are also accepted and split into one of each.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Optional

PREFERENCE_TASKS = ("dpo", "orpo", "simpo", "kto")
PAIRWISE_TASKS = ("dpo", "orpo", "simpo")
PAIRED_KEYS = ("prompt", "chosen", "rejected")
KTO_KEYS = ("prompt", "completion", "label")


def _message_problem(m: Any, where: str) -> Optional[str]:
    if not isinstance(m, dict) or not isinstance(m.get("role"), str):
        return f"{where}: each turn is an object with role and content"
    if m.get("content") is not None and not isinstance(m.get("content"), str):
        return f"{where}: content of a {m['role']} turn must be text"
    return None


def _prompt_problem(v: Any) -> Optional[str]:
    if isinstance(v, str):
        return None if v.strip() else "prompt is empty"
    if not isinstance(v, list) or not v:
        return "prompt must be text or a non-empty list of messages ({role, content})"
    for m in v:
        p = _message_problem(m, "prompt")
        if p:
            return p
    if v[-1]["role"] == "assistant":
        return ("prompt's last turn is the assistant's; the prompt ends with the user's turn and the replies go "
                "in chosen/rejected (or completion)")
    return None


def _reply_problem(v: Any, key: str) -> Optional[str]:
    if isinstance(v, str):
        return None if v.strip() else f"{key} is empty"
    turns = [v] if isinstance(v, dict) else v
    if not isinstance(turns, list) or not turns:
        return f"{key} must be text, an assistant message, or a list of messages ending with the assistant's"
    for m in turns:
        p = _message_problem(m, key)
        if p:
            return p
    if turns[-1]["role"] != "assistant":
        return f"{key}'s last turn is {turns[-1]['role']!r}, not the assistant's"
    return None


def row_problem(row: Any, task: str) -> Optional[str]:
    """What is wrong with one row for ``task`` (one line), or None."""
    if not isinstance(row, dict):
        return f"a row is a JSON object, not {type(row).__name__}"
    has = ", ".join(sorted(row)) or "nothing"
    paired = all(k in row for k in ("chosen", "rejected"))
    if task == "kto" and not paired:
        if "completion" not in row and ("chosen" in row or "rejected" in row):
            missing = "rejected" if "chosen" in row else "chosen"
            return f"a preference row needs prompt, chosen and rejected; this one has no {missing} (it has: {has})"
        missing = [k for k in KTO_KEYS if row.get(k) is None]
        if missing:
            return (f"a KTO row needs prompt, completion and label (true/false), or prompt, chosen and rejected; "
                    f"this one has no {', '.join(missing)} (it has: {has})")
        if not isinstance(row["label"], bool):
            return f"label must be true or false, not {json.dumps(row['label'])}"
        return _prompt_problem(row["prompt"]) or _reply_problem(row["completion"], "completion")
    missing = [k for k in PAIRED_KEYS if row.get(k) is None]
    if missing:
        return (f"a preference row needs prompt, chosen and rejected; this one has no {', '.join(missing)} "
                f"(it has: {has})")
    return (_prompt_problem(row["prompt"]) or _reply_problem(row["chosen"], "chosen")
            or _reply_problem(row["rejected"], "rejected"))


def sample_rows(path: Path, limit: int = 1000) -> Iterator[tuple[str, Any]]:
    """(where, row) for the first ``limit`` rows of a local ``.jsonl`` or ``.json`` file (where is
    ``file:line``, or ``file: row N`` in a JSON list); a line that is not JSON comes as a
    ``json.JSONDecodeError``. Nothing for other files or layouts (the worker reads them)."""
    path = Path(path)
    if path.suffix not in (".jsonl", ".json") or not path.is_file():
        return
    with path.open(encoding="utf-8", errors="replace") as fh:
        if path.suffix == ".json":
            text = fh.read(64 << 20)
            try:
                data = json.loads(text)
            except json.JSONDecodeError:  # maybe JSON lines under a .json name
                lines = text.splitlines()
            else:
                if isinstance(data, list):  # else a {split: rows} or columnar layout: the worker reads it
                    for i, row in enumerate(data[:limit], 1):
                        yield f"{path}: row {i}", row
                return
        else:
            lines = [ln for _, ln in zip(range(limit), fh)]
    for i, ln in enumerate(lines[:limit], 1):
        if not ln.strip():
            continue
        try:
            yield f"{path}:{i}", json.loads(ln)
        except json.JSONDecodeError as exc:
            yield f"{path}:{i}", exc


def sample_problems(path: Path, task: str, limit: int = 1000, shown: int = 5) -> list[str]:
    """The first problems (``file:line: message``, at most ``shown``) among the first ``limit``
    rows of a local ``.jsonl`` or ``.json`` file; [] for other files (the worker checks them)."""
    out: list[str] = []
    for where, row in sample_rows(path, limit):
        p = f"not JSON ({row.msg})" if isinstance(row, json.JSONDecodeError) else row_problem(row, task)
        if p:
            out.append(f"{where}: {p}")
            if len(out) >= shown:
                break
    return out


# --------------------------------------------------------------------------- a row as messages

def turns(v: Any, role: str) -> list[dict]:
    """A prompt or reply as messages: a string is one ``role`` turn; content None is ""."""
    if isinstance(v, str):
        return [{"role": role, "content": v}]
    msgs = [v] if isinstance(v, dict) else list(v)
    return [{**m, "content": m.get("content") if m.get("content") is not None else ""} for m in msgs]


def prompt_messages(row: dict, system: Optional[str] = None) -> list[dict]:
    """The row's prompt as messages, its own ``system`` (else the job's ``system_prompt``) first
    unless the prompt has a system turn."""
    msgs = turns(row["prompt"], "user")
    system = row.get("system") or system
    if system and not any(m["role"] == "system" for m in msgs):
        msgs = [{"role": "system", "content": str(system)}, *msgs]
    return msgs


def replies(row: dict) -> list[Any]:
    """The row's replies: chosen and rejected, or a KTO row's completion."""
    return [row["chosen"], row["rejected"]] if "chosen" in row and "rejected" in row else [row["completion"]]


def template_problems(path: Path, tokenizer, task: str, *, system: Optional[str] = None,
                      enable_thinking: Optional[bool] = None, first: int = 50, shown: int = 5) -> list[str]:
    """Rows among the first ``first`` of a local data file that the model's chat template cannot
    render as the worker renders them (``file:line: message``, at most ``shown``): each reply
    after its prompt (:meth:`hpcft.core.chat.ChatRenderer.completion`). ``tokenizer`` is a
    tokenizer or the login side's :class:`hpcft.core.chat.TemplateTokenizer`. Rows the basic
    check refuses are left to :func:`sample_problems`."""
    from .chat import ChatRenderer, ConversationError

    renderer = ChatRenderer(tokenizer, enable_thinking)
    out: list[str] = []
    for where, row in sample_rows(path, first):
        if isinstance(row, json.JSONDecodeError) or row_problem(row, task):
            continue
        row = {k: v for k, v in row.items() if v is not None}
        try:
            for reply in replies(row):
                renderer.completion(prompt_messages(row, system), turns(reply, "assistant"))
        except ConversationError as exc:
            out.append(f"{where}: {exc}")
            if len(out) >= shown:
                break
    return out
