"""Preference rows (``task: dpo``, ``orpo``, ``simpo``, ``kto``): what a row must hold, checked
the same way on both sides. The login side checks a sample of a local data file in the
pre-flight (:mod:`hpcft.preflight.preference`, so a bad file queues nothing); the worker checks
every row (:mod:`hpcft.worker.pref_data`). Pure Python, no third-party imports.

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
from typing import Any, Optional

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


def sample_problems(path: Path, task: str, limit: int = 1000, shown: int = 5) -> list[str]:
    """The first problems (``file:line: message``, at most ``shown``) among the first ``limit``
    rows of a local ``.jsonl`` or ``.json`` file; [] for other files (the worker checks them)."""
    path = Path(path)
    if path.suffix not in (".jsonl", ".json") or not path.is_file():
        return []
    out: list[str] = []
    with path.open(encoding="utf-8", errors="replace") as fh:
        if path.suffix == ".json":
            text = fh.read(64 << 20)
            try:
                data = json.loads(text)
            except json.JSONDecodeError:  # maybe JSON lines under a .json name
                rows = [(i, ln) for i, ln in enumerate(text.splitlines(), 1)]
            else:
                rows_obj = data if isinstance(data, list) else None
                if rows_obj is None:
                    return []  # a {split: rows} or columnar layout: the worker reads it
                for i, row in enumerate(rows_obj[:limit], 1):
                    p = row_problem(row, task)
                    if p:
                        out.append(f"{path}: row {i}: {p}")
                        if len(out) >= shown:
                            break
                return out
        else:
            rows = []
            for i, ln in enumerate(fh, 1):
                if i > limit:
                    break
                rows.append((i, ln))
        for i, ln in rows[:limit]:
            if not ln.strip():
                continue
            try:
                row = json.loads(ln)
            except json.JSONDecodeError as exc:
                out.append(f"{path}:{i}: not JSON ({exc.msg})")
            else:
                p = row_problem(row, task)
                if p:
                    out.append(f"{path}:{i}: {p}")
            if len(out) >= shown:
                break
    return out
