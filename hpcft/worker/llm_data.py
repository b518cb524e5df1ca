"""Instruction data for ``task: causal-lm``: formats, prompts, loss masking, packing.

Three formats, detected from the columns or named with ``train.data_format``:

* **alpaca**: ``instruction`` / ``input`` (optional) / ``output`` (also ``response``);
* **messages**: ``messages: [{role, content}, ...]`` (OpenAI style); ShareGPT's
  ``conversations: [{from, value}, ...]`` is read as the same thing;
* **text**: plain ``text``; every token is trained.

Prompts are rendered with the model's own chat template when its tokenizer has one, else
with :data:`PLAIN_TEMPLATE` (documented in docs/llm.md). The labels of every token that is not
an assistant reply are ``-100``, so the loss covers the responses only. Sequences longer than
``max_seq_length`` are truncated. Pure Python over a tokenizer; no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Optional

from .errors import DataFormatError

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


def to_messages(row: dict, fmt: str, system: Optional[str] = None) -> list[dict]:
    """One example as a list of {role, content}."""
    msgs: list[dict] = []
    if fmt == "alpaca":
        if row.get("system") or system:
            msgs.append({"role": "system", "content": str(row.get("system") or system)})
        instruction = str(row.get("instruction") or "")
        extra = row.get("input")
        user = f"{instruction}\n\n{extra}" if extra else instruction
        answer = row.get("output") if row.get("output") is not None else row.get("response")
        msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": str(answer or "")}]
        return msgs
    if fmt == "messages":
        raw = row.get("messages") or []
        msgs = [{"role": str(m.get("role")), "content": str(m.get("content") or "")} for m in raw]
    elif fmt == "sharegpt":
        raw = row.get("conversations") or []
        for m in raw:
            role = SHAREGPT_ROLES.get(str(m.get("from", "")).lower())
            if role is None:
                raise DataFormatError(f"unknown ShareGPT speaker {m.get('from')!r} "
                                      f"(known: {', '.join(sorted(SHAREGPT_ROLES))})")
            msgs.append({"role": role, "content": str(m.get("value") or "")})
    else:
        raise DataFormatError(f"format {fmt} has no messages")
    if system and not any(m["role"] == "system" for m in msgs):
        msgs.insert(0, {"role": "system", "content": system})
    return msgs


class Renderer:
    """Turns messages into (text, trained?) segments: the chat template when the tokenizer has
    one, else :data:`PLAIN_TEMPLATE`."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.chat = bool(getattr(tokenizer, "chat_template", None))

    @property
    def name(self) -> str:
        return "the model's chat template" if self.chat else "the plain template (### Instruction / ### Response)"

    def _render(self, msgs: list[dict], gen: bool) -> str:
        return self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)

    def prompt(self, msgs: list[dict]) -> str:
        """The text a model is given to answer the last user turn (generation)."""
        if self.chat:
            return self._render(msgs, True)
        text = "".join(self._plain(m) for m in msgs)
        return text + PLAIN_TEMPLATE["assistant_prefix"]

    def _plain(self, m: dict) -> str:
        if m["role"] == "assistant":
            return PLAIN_TEMPLATE["assistant_prefix"] + m["content"] + (self.tok.eos_token or "") + \
                PLAIN_TEMPLATE["between"]
        key = "system" if m["role"] == "system" else "user"
        return PLAIN_TEMPLATE[key].format(content=m["content"])

    def segments(self, msgs: list[dict]) -> list[tuple[str, bool]]:
        """[(text, is_response)], in order; the concatenation is the whole conversation."""
        out: list[tuple[str, bool]] = []
        done = ""
        for i, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            if self.chat:
                before = self._render(msgs[:i], True) if i else ""
                full = self._render(msgs[:i + 1], False)
            else:
                before = "".join(self._plain(x) for x in msgs[:i]) + PLAIN_TEMPLATE["assistant_prefix"]
                full = before + m["content"] + (self.tok.eos_token or "")
            if not before.startswith(done) or not full.startswith(before):
                raise DataFormatError("the chat template does not render a conversation as a prefix of its "
                                      "continuation, so replies cannot be located for loss masking; "
                                      "use data_format: text or a model with a standard chat template")
            out.append((before[len(done):], False))
            out.append((full[len(before):], True))
            done = full
        return out


def encode(tokenizer, renderer: Renderer, row: dict, fmt: str, max_len: int,
           system: Optional[str] = None) -> dict:
    """input_ids and labels (prompt tokens -100) for one example, truncated to max_len."""
    ids: list[int] = []
    labels: list[int] = []
    if fmt == "text":
        ids = tokenizer(str(row.get("text") or ""), add_special_tokens=True)["input_ids"]
        if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
            ids = ids + [tokenizer.eos_token_id]
        labels = list(ids)
    else:
        first = True
        for text, train in renderer.segments(to_messages(row, fmt, system)):
            # BOS (when the tokenizer adds one and the template did not) goes before the first segment only
            piece = tokenizer(text, add_special_tokens=first and not renderer.chat)["input_ids"]
            first = False
            ids += piece
            labels += piece if train else [IGNORE] * len(piece)
    ids, labels = ids[:max_len], labels[:max_len]
    return {"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)}


def prompt_and_reference(renderer: Renderer, row: dict, fmt: str, system: Optional[str] = None
                         ) -> Optional[tuple[str, str]]:
    """For samples.jsonl: the prompt up to the last reply, and that reply."""
    if fmt == "text":
        text = str(row.get("text") or "")
        cut = max(1, len(text) // 2)
        return text[:cut], text[cut:]
    msgs = to_messages(row, fmt, system)
    last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
    if last is None:
        return None
    return renderer.prompt(msgs[:last]), msgs[last]["content"]


def pack(examples: list[dict], max_len: int) -> list[dict]:
    """Concatenate tokenized examples into sequences of up to max_len tokens, never splitting
    one (an example longer than max_len was already truncated). ``position_ids`` restart at 0 for
    each example (rotary positions as if alone); attention spans the packed sequence, as in
    TRL's and LLaMA-Factory's plain packing. Labels keep their -100 prompt masks."""
    out: list[dict] = []
    cur: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
    for ex in examples:
        n = len(ex["input_ids"])
        if cur["input_ids"] and len(cur["input_ids"]) + n > max_len:
            out.append(cur)
            cur = {"input_ids": [], "labels": [], "position_ids": []}
        cur["input_ids"] += ex["input_ids"]
        cur["labels"] += ex["labels"]
        cur["position_ids"] += list(range(n))
    if cur["input_ids"]:
        out.append(cur)
    for seq in out:
        seq["attention_mask"] = [1] * len(seq["input_ids"])
    return out


@dataclass
class Collator:
    """Pads a batch to its longest sequence (a multiple of 8 on accelerators); labels pad -100."""

    pad_id: int
    multiple: Optional[int] = None

    def __call__(self, batch: list[dict]) -> dict:
        import torch

        longest = max(len(b["input_ids"]) for b in batch)
        if self.multiple:
            longest = -(-longest // self.multiple) * self.multiple
        keys = [k for k in ("input_ids", "labels", "attention_mask", "position_ids") if k in batch[0]]
        pad: dict[str, Any] = {"input_ids": self.pad_id, "labels": IGNORE, "attention_mask": 0, "position_ids": 0}
        out = {}
        for k in keys:
            out[k] = torch.tensor([b[k] + [pad[k]] * (longest - len(b[k])) for b in batch], dtype=torch.long)
        return out


def real_tokens(ds) -> int:
    """Non-pad tokens in a tokenized dataset (for tokens/s)."""
    return sum(len(x) for x in ds["input_ids"])
