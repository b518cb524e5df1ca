"""Supervised fine-tuning rows (``task: causal-lm``): what a conversation row must hold, checked
on a sample of a local data file by the pre-flight (:mod:`hpcft.preflight.sft_data`), so a file
the worker would refuse queues nothing. The worker checks every row with the model's own chat
template (:mod:`hpcft.core.chat`), and reads rows as messages with the functions here
(:func:`to_messages`, :func:`row_tools`), the same on both sides. Pure Python.

Formats as the worker reads them (:mod:`hpcft.worker.data.llm`): ``messages`` (OpenAI style),
ShareGPT ``conversations`` (from/value), alpaca (instruction/output), text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Optional

from .chat import ConversationError

# ShareGPT speakers (``from``) and the role each one's turn has
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "system": "system",
                  "tool": "tool", "function": "tool", "observation": "tool", "function_call": "assistant"}
SHAREGPT_ASSISTANT = tuple(k for k, v in SHAREGPT_ROLES.items() if v == "assistant")
SHAREGPT_KNOWN = tuple(SHAREGPT_ROLES)


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


def template_problems(path: Path, tokenizer, data_format: Optional[str] = None, *, system: Optional[str] = None,
                      enable_thinking: Optional[bool] = None, train_on: str = "all", first: int = 20,
                      with_tools: int = 200, shown: int = 5) -> list[str]:
    """Rows of a local data file that the model's chat template cannot train on (``file:line:
    message``, at most ``shown``): the first ``first`` rows and up to ``with_tools`` rows with
    tools or tool calls, rendered as the worker renders them. ``tokenizer`` is a tokenizer or a
    :class:`hpcft.core.chat.TemplateTokenizer` (the login side's stand-in)."""
    from .chat import ChatRenderer

    renderer = ChatRenderer(tokenizer, enable_thinking)
    out: list[str] = []
    plain = tooled = 0
    for where, row in sample_rows(path):
        if isinstance(row, str) or row_problem(row, data_format):
            continue  # sample_problems names those
        fmt = row_format(row, data_format)
        if fmt not in ("messages", "sharegpt", "alpaca"):
            continue
        turns = row.get("messages") or row.get("conversations") or []
        tools = bool(row.get("tools")) or any(isinstance(m, dict) and (m.get("tool_calls") or
                                                                       m.get("from") == "function_call") for m in turns)
        if (tools and tooled >= with_tools) or (not tools and plain >= first):
            continue
        tooled, plain = tooled + tools, plain + (not tools)
        try:
            renderer.examples(to_messages(row, fmt, system), row_tools(row), train_on)
        except ConversationError as exc:
            out.append(f"{where}: {exc}")
            if len(out) >= shown:
                break
    return out


# --------------------------------------------------------------------------- a row as messages

def _text(value: Any) -> Optional[str]:
    """Message content as text: a string, None, or OpenAI content parts (their text joined)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in value)
    return str(value)


def _json(value: Any, what: str) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            raise ConversationError(f"{what} is not valid JSON: {value[:60]!r}") from None
    return value


def _tool_call(call: Any) -> dict:
    """One tool call in the OpenAI form ``{type: function, function: {name, arguments}}``, its
    arguments a mapping (what chat templates expect; a JSON string is parsed)."""
    call = _json(call, "a tool call")
    if not isinstance(call, dict):
        raise ConversationError(f"a tool call must be an object with a name, not {call!r}")
    fn = call.get("function", call)
    if not isinstance(fn, dict) or not fn.get("name"):
        raise ConversationError(f"a tool call has no function name: {json.dumps(call)[:80]}")
    args = fn.get("arguments", fn.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except ValueError:
            pass  # not JSON: the template gets the text as it is
    out = {"type": "function", "function": {"name": str(fn["name"]), "arguments": args}}
    if call.get("id") is not None:
        out["id"] = str(call["id"])
    return out


def _message(m: Any) -> dict:
    if not isinstance(m, dict):
        raise ConversationError(f"a message must be an object with role and content, not {m!r}"[:120])
    out: dict[str, Any] = {"role": str(m.get("role")), "content": _text(m.get("content"))}
    if m.get("tool_calls"):
        out["tool_calls"] = [_tool_call(c) for c in _json(m["tool_calls"], "tool_calls")]
    elif out["content"] is None:
        out["content"] = ""
    for key in ("reasoning_content", "name", "tool_call_id"):
        if isinstance(m.get(key), str):
            out[key] = m[key]
    return out


def row_tools(row: dict) -> Optional[list]:
    """The row's ``tools`` column (a list, or a JSON string as LLaMA-Factory writes it) in the
    OpenAI form ``[{type: function, function: {...}}]``; None when empty."""
    tools = _json(row.get("tools"), "the tools column")
    if not tools:
        return None
    if not isinstance(tools, list):
        tools = [tools]
    return [t if isinstance(t, dict) and "type" in t else {"type": "function", "function": t} for t in tools]


def to_messages(row: dict, fmt: str, system: Optional[str] = None) -> list[dict]:
    """One example as OpenAI-style messages: role, content (None beside tool_calls), tool_calls,
    reasoning_content. The row's own ``system`` column (any format) comes before ``system``
    (the job's ``system_prompt``); alpaca's ``history`` ([[user, assistant], ...]) comes before
    the instruction; ShareGPT's ``function_call``/``observation`` turns become tool calls and
    tool results."""
    msgs: list[dict] = []
    if fmt == "alpaca":
        for pair in _json(row.get("history"), "history") or []:
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise ConversationError(f"history must be [[user, assistant], ...]; got {pair!r}"[:120])
            msgs += [{"role": "user", "content": str(pair[0] or "")},
                     {"role": "assistant", "content": str(pair[1] or "")}]
        instruction = str(row.get("instruction") or "")
        extra = row.get("input")
        user = f"{instruction}\n\n{extra}" if extra else instruction
        answer = row.get("output") if row.get("output") is not None else row.get("response")
        msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": str(answer or "")}]
    elif fmt == "messages":
        msgs = [_message(m) for m in (row.get("messages") or [])]
    elif fmt == "sharegpt":
        for m in row.get("conversations") or []:
            speaker = str(m.get("from", "")).lower()
            role = SHAREGPT_ROLES.get(speaker)
            if role is None:
                raise ConversationError(f"unknown ShareGPT speaker {m.get('from')!r} "
                                      f"(known: {', '.join(sorted(SHAREGPT_ROLES))})")
            if speaker == "function_call":
                msgs.append({"role": "assistant", "content": None, "tool_calls": [_tool_call(m.get("value"))]})
            else:
                msgs.append({"role": role, "content": str(m.get("value") or "")})
    else:
        raise ConversationError(f"format {fmt} has no messages")
    own = row.get("system") if isinstance(row.get("system"), str) and row.get("system") else None
    if (own or system) and not any(m["role"] == "system" for m in msgs):
        msgs.insert(0, {"role": "system", "content": own or system})
    return msgs
