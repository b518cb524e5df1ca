"""Supervised fine-tuning rows (``task: causal-lm``): what a conversation row must hold, checked
on a sample of a local data file by the pre-flight (:mod:`hpcft.preflight.sft_data`), so a file
the worker would refuse queues nothing. The worker checks every row with the model's own chat
template (:mod:`hpcft.worker.chat`). Pure Python, no third-party imports.

Formats as the worker reads them (:mod:`hpcft.worker.llm_data`): ``messages`` (OpenAI style),
ShareGPT ``conversations`` (from/value), alpaca (instruction/output), text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Optional

# ShareGPT speakers whose turn is the assistant's (the worker's SHAREGPT_ROLES agree)
SHAREGPT_ASSISTANT = ("gpt", "assistant", "chatgpt", "bing", "bard", "function_call")
SHAREGPT_KNOWN = SHAREGPT_ASSISTANT + ("human", "user", "system", "tool", "function", "observation")


def row_format(row: dict, named: Optional[str]) -> Optional[str]:
    """The row's format as the worker detects it from the columns (None: not one of ours)."""
    if named and named != "auto":
        return named
    for fmt, col in (("messages", "messages"), ("sharegpt", "conversations")):
        if col in row:
            return fmt
    if "instruction" in row and ("output" in row or "response" in row):
        return "alpaca"
    return "text" if "text" in row else None


def row_problem(row: Any, named: Optional[str] = None) -> Optional[str]:
    """What is wrong with one row (one line), or None."""
    if not isinstance(row, dict):
        return f"a row is a JSON object, not {type(row).__name__}"
    fmt = row_format(row, named)
    if fmt in ("messages", "sharegpt"):
        key = "messages" if fmt == "messages" else "conversations"
        turns = row.get(key)
        if not isinstance(turns, list) or not turns:
            return f"{key} must be a non-empty list of turns"
        if not all(isinstance(m, dict) for m in turns):
            return f"each turn of {key} is an object ({'role, content' if fmt == 'messages' else 'from, value'})"
        if fmt == "messages":
            last = turns[-1].get("role")
            if last != "assistant":
                return (f"the last turn is {last!r}, not the assistant's: nothing to train on "
                        "(end each conversation with the assistant's reply)")
            for m in turns:
                if m.get("role") == "assistant" and m.get("content") is None and not m.get("tool_calls"):
                    return "an assistant turn has neither content nor tool_calls"
        else:
            unknown = [str(m.get("from")) for m in turns if str(m.get("from", "")).lower() not in SHAREGPT_KNOWN]
            if unknown:
                return f"unknown ShareGPT speaker {unknown[0]!r} (known: {', '.join(sorted(SHAREGPT_KNOWN))})"
            last = str(turns[-1].get("from", "")).lower()
            if last not in SHAREGPT_ASSISTANT:
                return (f"the last turn is from {turns[-1].get('from')!r}, not the assistant (gpt): nothing to "
                        "train on (end each conversation with the assistant's reply)")
    elif fmt == "alpaca":
        history = row.get("history")
        if history and not (isinstance(history, list) and all(isinstance(p, list) and len(p) == 2 for p in history)):
            return "history must be a list of [user, assistant] pairs"
    return None


def sample_rows(path: Path, limit: int = 1000) -> Iterator[tuple[str, Any]]:
    """(where, row) for the first ``limit`` rows of a local ``.jsonl``/``.json`` file: ``where`` is
    ``file:line`` (JSON lines) or ``file: row N`` (a JSON array); a line that is not JSON yields
    its decode error as a string row. Nothing for other files or layouts (the worker reads them)."""
    path = Path(path)
    if path.suffix.lower() not in (".jsonl", ".json") or not path.is_file():
        return
    with path.open(encoding="utf-8", errors="replace") as fh:
        text = fh.read(64 << 20) if path.suffix.lower() == ".json" else None
    if text is not None:
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            lines = text.splitlines()  # JSON lines under a .json name
        else:
            for i, row in enumerate(data[:limit] if isinstance(data, list) else [], 1):
                yield f"{path}: row {i}", row
            return
    else:
        lines = []
        with path.open(encoding="utf-8", errors="replace") as fh:
            for i, ln in enumerate(fh):
                if i >= limit:
                    break
                lines.append(ln)
    for i, ln in enumerate(lines[:limit], 1):
        if ln.strip():
            try:
                yield f"{path}:{i}", json.loads(ln)
            except json.JSONDecodeError as exc:
                yield f"{path}:{i}", f"not JSON ({exc.msg})"


def sample_problems(path: Path, data_format: Optional[str] = None, limit: int = 1000, shown: int = 5) -> list[str]:
    """The first problems (``file:line: message``, at most ``shown``) among the first ``limit`` rows."""
    out = []
    for where, row in sample_rows(path, limit):
        problem = row if isinstance(row, str) else row_problem(row, data_format)
        if problem:
            out.append(f"{where}: {problem}")
            if len(out) >= shown:
                break
    return out
