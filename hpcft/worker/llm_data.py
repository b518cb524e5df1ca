"""Instruction data for ``task: causal-lm``: formats, prompts, loss masking.

Formats, detected from the columns or named with ``train.data_format``:

* **alpaca**: ``instruction`` / ``input`` (optional) / ``output`` (also ``response``), optional
  ``system`` and ``history`` (``[[user, assistant], ...]`` before the instruction);
* **messages**: ``messages: [{role, content, tool_calls?, reasoning_content?}, ...]`` (OpenAI
  style), optional ``tools`` and ``system`` columns; ShareGPT's ``conversations: [{from, value},
  ...]`` (with ``function_call``/``observation`` turns, ``system`` and ``tools``) is read as the
  same thing;
* **text**: plain ``text``; every token is trained.

Prompts are rendered with the model's own chat template when its tokenizer has one
(:mod:`hpcft.worker.chat`: exact masks, thinking, end of turn), else with
:data:`PLAIN_TEMPLATE` (documented in docs/llm.md). The labels of every token that is not an
assistant reply are ``-100``, so the loss covers the responses only (every assistant turn, or
the last with ``train_on: last``). Sequences longer than ``max_seq_length`` are truncated;
packing is :mod:`hpcft.worker.packing`'s. Pure Python over a tokenizer; no torch.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Optional

from .errors import DataFormatError
from .packing import Collator, pack

__all__ = ["IGNORE", "PLAIN_TEMPLATE", "Collator", "DataFormatError", "Renderer", "detect_format", "encode",
           "pack", "prompt_and_reference", "real_tokens", "row_tools", "to_messages"]

IGNORE = -100

# The prompt format for models without a chat template (base models), Alpaca's own.
PLAIN_TEMPLATE = {
    "system": "{content}\n\n",
    "user": "### Instruction:\n{content}\n\n",
    "assistant_prefix": "### Response:\n",
    "assistant": "{content}",       # followed by the EOS token
    "between": "\n\n",
}
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "system": "system",
                  "tool": "tool", "function": "tool", "observation": "tool", "function_call": "assistant"}


def detect_format(columns: Iterable[str], named: Optional[str] = None) -> str:
    cols = set(columns)
    if named and named != "auto":
        need = {"alpaca": {"instruction", "output"}, "messages": {"messages"}, "sharegpt": {"conversations"},
                "text": {"text"}}[named]
        if named == "alpaca" and "response" in cols:
            need = {"instruction", "response"}
        if not need <= cols:
            raise DataFormatError(f"data_format {named} needs column(s) {', '.join(sorted(need - cols))}; "
                                  f"the data has: {', '.join(sorted(cols))}")
        return named
    if "messages" in cols:
        return "messages"
    if "conversations" in cols:
        return "sharegpt"
    if "instruction" in cols and ({"output", "response"} & cols):
        return "alpaca"
    if "text" in cols:
        return "text"
    raise DataFormatError("cannot tell the data format from the columns "
                          f"({', '.join(sorted(cols))}); causal-lm reads alpaca (instruction/input/output), "
                          "messages (role/content), ShareGPT conversations (from/value) or text; "
                          "set train.data_format")


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
            raise DataFormatError(f"{what} is not valid JSON: {value[:60]!r}") from None
    return value


def _tool_call(call: Any) -> dict:
    """One tool call in the OpenAI form ``{type: function, function: {name, arguments}}``, its
    arguments a mapping (what chat templates expect; a JSON string is parsed)."""
    call = _json(call, "a tool call")
    if not isinstance(call, dict):
        raise DataFormatError(f"a tool call must be an object with a name, not {call!r}")
    fn = call.get("function", call)
    if not isinstance(fn, dict) or not fn.get("name"):
        raise DataFormatError(f"a tool call has no function name: {json.dumps(call)[:80]}")
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
        raise DataFormatError(f"a message must be an object with role and content, not {m!r}"[:120])
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
                raise DataFormatError(f"history must be [[user, assistant], ...]; got {pair!r}"[:120])
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
                raise DataFormatError(f"unknown ShareGPT speaker {m.get('from')!r} "
                                      f"(known: {', '.join(sorted(SHAREGPT_ROLES))})")
            if speaker == "function_call":
                msgs.append({"role": "assistant", "content": None, "tool_calls": [_tool_call(m.get("value"))]})
            else:
                msgs.append({"role": role, "content": str(m.get("value") or "")})
    else:
        raise DataFormatError(f"format {fmt} has no messages")
    own = row.get("system") if isinstance(row.get("system"), str) and row.get("system") else None
    if (own or system) and not any(m["role"] == "system" for m in msgs):
        msgs.insert(0, {"role": "system", "content": own or system})
    return msgs


class Renderer:
    """Turns a conversation into training sequences of (text, trained?) pieces: the model's chat
    template (:class:`hpcft.worker.chat.ChatRenderer`) when the tokenizer has one, else
    :data:`PLAIN_TEMPLATE`."""

    def __init__(self, tokenizer, enable_thinking: Optional[bool] = None, train_on: str = "all"):
        from .chat import ChatRenderer

        self.tok = tokenizer
        self.chat = bool(getattr(tokenizer, "chat_template", None))
        self.train_on = train_on or "all"
        self.enable_thinking = enable_thinking
        self.template = ChatRenderer(tokenizer, enable_thinking) if self.chat else None

    @property
    def name(self) -> str:
        return "the model's chat template" if self.chat else "the plain template (### Instruction / ### Response)"

    def prompt(self, msgs: list[dict], tools: Optional[list] = None) -> str:
        """The text a model is given to answer the last user turn (generation)."""
        if self.template is not None:
            return self.template.prompt(msgs, tools)
        text = "".join(self._plain(m) for m in msgs)
        return text + PLAIN_TEMPLATE["assistant_prefix"]

    def _plain(self, m: dict) -> str:
        if m["role"] == "assistant":
            return PLAIN_TEMPLATE["assistant_prefix"] + (m["content"] or "") + (self.tok.eos_token or "") + \
                PLAIN_TEMPLATE["between"]
        key = "system" if m["role"] == "system" else "user"
        return PLAIN_TEMPLATE[key].format(content=m["content"] or "")

    def examples(self, msgs: list[dict], tools: Optional[list] = None) -> list[list[tuple[str, bool]]]:
        """[[(text, is_response), ...], ...]: one or more sequences (see ChatRenderer.examples)."""
        if not msgs or msgs[-1]["role"] != "assistant":
            last = msgs[-1]["role"] if msgs else "nobody"
            raise DataFormatError(f"the last turn is {last}'s, not the assistant's: nothing to train on "
                                  "(end each conversation with the assistant's reply)")
        if self.template is not None:
            return self.template.examples(msgs, tools, self.train_on)
        if tools or any(m.get("tool_calls") for m in msgs):
            raise DataFormatError("tool calls need a model with a chat template; the plain template has none")
        out: list[tuple[str, bool]] = []
        done = ""
        turns = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
        for i in turns[-1:] if self.train_on == "last" else turns:
            before = "".join(self._plain(x) for x in msgs[:i]) + PLAIN_TEMPLATE["assistant_prefix"]
            full = before + (msgs[i]["content"] or "") + (self.tok.eos_token or "")
            out += [(before[len(done):], False), (full[len(before):], True)]
            done = full + PLAIN_TEMPLATE["between"]
        return [out]


def encode(tokenizer, renderer: Renderer, row: dict, fmt: str, max_len: int,
           system: Optional[str] = None, where: str = "a row") -> list[dict]:
    """Tokenized examples (input_ids, labels with prompt tokens -100) for one row, each
    truncated to max_len: one per row, except where the template rewrites history (see
    :mod:`hpcft.worker.chat`). Problems name the row (``where``)."""
    if fmt == "text":
        ids = tokenizer(str(row.get("text") or ""), add_special_tokens=True)["input_ids"]
        if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
            ids = ids + [tokenizer.eos_token_id]
        ids = ids[:max_len]
        return [{"input_ids": ids, "labels": list(ids)}]
    try:
        seqs = renderer.examples(to_messages(row, fmt, system), row_tools(row))
    except DataFormatError as exc:
        raise DataFormatError(f"{where}: {exc}") from None
    out = []
    for pieces in seqs:
        ids: list[int] = []
        labels: list[int] = []
        for n, (text, train) in enumerate(pieces):
            # BOS (when the tokenizer adds one and the template did not) goes before the first piece only
            piece = tokenizer(text, add_special_tokens=n == 0 and not renderer.chat)["input_ids"] if text else []
            ids += piece
            labels += piece if train else [IGNORE] * len(piece)
        out.append({"input_ids": ids[:max_len], "labels": labels[:max_len]})
    return out


def prompt_and_reference(renderer: Renderer, row: dict, fmt: str, system: Optional[str] = None
                         ) -> Optional[tuple[str, str]]:
    """For samples.jsonl: the prompt up to the last reply, and that reply."""
    if fmt == "text":
        text = str(row.get("text") or "")
        cut = max(1, len(text) // 2)
        return text[:cut], text[cut:]
    msgs = to_messages(row, fmt, system)
    last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
    if not last:
        return None
    reply = msgs[last]
    reference = reply["content"] or json.dumps([c["function"] for c in reply.get("tool_calls") or []],
                                               ensure_ascii=False)
    return renderer.prompt(msgs[:last], row_tools(row)), reference


def real_tokens(ds) -> int:
    """Non-pad tokens in a tokenized dataset (for tokens/s)."""
    return sum(len(x) for x in ds["input_ids"])
