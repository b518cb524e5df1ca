"""Instruction data for ``task: causal-lm``: formats, prompts, loss masking.

Formats, detected from the columns or named with ``train.data_format``:

* **alpaca**: ``instruction`` / ``input`` (optional) / ``output`` (also ``response``), optional
  ``system`` and ``history`` (``[[user, assistant], ...]`` before the instruction);
* **messages**: ``messages: [{role, content, tool_calls?, reasoning_content?}, ...]`` (OpenAI
  style), optional ``tools`` and ``system`` columns; ShareGPT's ``conversations: [{from, value},
  ...]`` (with ``function_call``/``observation`` turns, ``system`` and ``tools``) is read as the
  same thing;
* **text**: plain ``text``; every token is trained. The documents are concatenated with the EOS
  between them and cut into ``max_seq_length`` blocks (no token lost; ``train.text_last_block``
  keeps or drops the last, shorter one); with ``packing`` each document attends only to itself.

Prompts are rendered with the model's own chat template when its tokenizer has one
(:mod:`hpcft.core.chat`: exact masks, thinking, end of turn), else with
:data:`PLAIN_TEMPLATE` (documented in docs/llm.md). The labels of every token that is not an
assistant reply are ``-100``, so the loss covers the responses only (every assistant turn, or
the last with ``train_on: last``); the ids are those of the whole rendering, tokenized once, and
the mask comes from each piece's characters. Sequences longer than ``max_seq_length`` are truncated;
packing is :mod:`hpcft.worker.data.packing`'s. Pure Python over a tokenizer; no torch.
"""

from __future__ import annotations

import json
from typing import Iterable, Optional

from hpcft.core.chat import ConversationError
from hpcft.core.sft_rows import row_tools, to_messages
from hpcft.worker.data.packing import Collator, pack, text_blocks
from hpcft.worker.errors import DataFormatError

__all__ = ["IGNORE", "PLAIN_TEMPLATE", "Collator", "DataFormatError", "Renderer", "detect_format", "encode",
           "pack", "prompt_and_reference", "real_tokens", "row_tools", "text_blocks", "to_messages"]

IGNORE = -100

# The prompt format for models without a chat template (base models), Alpaca's own.
PLAIN_TEMPLATE = {
    "system": "{content}\n\n",
    "user": "### Instruction:\n{content}\n\n",
    "assistant_prefix": "### Response:\n",
    "assistant": "{content}",       # followed by the EOS token
    "between": "\n\n",
}


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


class Renderer:
    """Turns a conversation into training sequences of (text, trained?) pieces: the model's chat
    template (:class:`hpcft.core.chat.ChatRenderer`) when the tokenizer has one, else
    :data:`PLAIN_TEMPLATE`."""

    def __init__(self, tokenizer, enable_thinking: Optional[bool] = None, train_on: str = "all"):
        from hpcft.core.chat import ChatRenderer

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

    def completion(self, prompt_msgs: list[dict], reply_msgs: list[dict]) -> tuple[str, str]:
        """(prompt, completion) of one preference reply: the generation prompt, and everything
        the template writes after it for the reply (see ChatRenderer.completion)."""
        if not reply_msgs or reply_msgs[-1]["role"] != "assistant":
            raise DataFormatError("a reply must end with the assistant's turn")
        if self.template is not None:
            return self.template.completion(prompt_msgs, reply_msgs)
        prompt = self.prompt(prompt_msgs)
        body = "".join(self._plain(m) for m in prompt_msgs + reply_msgs).removesuffix(PLAIN_TEMPLATE["between"])
        return prompt, body[len(prompt):]

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
    :mod:`hpcft.core.chat`). Problems name the row (``where``)."""
    if fmt == "text":  # the whole document: hpcft.worker.data.packing.text_blocks cuts the corpus into blocks
        ids = tokenizer(str(row.get("text") or ""), add_special_tokens=True)["input_ids"]
        if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
            ids = ids + [tokenizer.eos_token_id]
        return [{"input_ids": ids, "labels": list(ids)}]
    try:
        seqs = renderer.examples(to_messages(row, fmt, system), row_tools(row))
    except (DataFormatError, ConversationError) as exc:
        raise DataFormatError(f"{where}: {exc}") from None
    out = []
    for pieces in seqs:
        # BOS (when the tokenizer adds one and the template did not): the plain template only
        ids, labels = tokenize_pieces(tokenizer, pieces, add_special_tokens=not renderer.chat)
        out.append({"input_ids": ids[:max_len], "labels": labels[:max_len]})
    return out


def tokenize_pieces(tokenizer, pieces: list[tuple[str, bool]], add_special_tokens: bool = False
                    ) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one sequence of (text, trained) pieces: the ids are those of the
    whole text tokenized at once (as ``apply_chat_template(tokenize=True)`` gives them; a
    SentencePiece tokenizer writes ``Red`` after a newline where the reply alone would start
    ``▁Red``), and a token is trained when it starts inside a trained piece (read from the
    tokenizer's character offsets). A slow tokenizer (no offsets) tokenizes piece by piece."""
    if not getattr(tokenizer, "is_fast", False):
        ids: list[int] = []
        labels: list[int] = []
        for n, (text, train) in enumerate(pieces):
            piece = tokenizer(text, add_special_tokens=add_special_tokens and n == 0)["input_ids"] if text else []
            ids += piece
            labels += piece if train else [IGNORE] * len(piece)
        return ids, labels
    spans, at = [], 0
    for text, train in pieces:
        if train and text:
            spans.append((at, at + len(text)))
        at += len(text)
    enc = tokenizer("".join(t for t, _ in pieces), add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = [i if start < end and any(a <= start < b for a, b in spans) else IGNORE
              for i, (start, end) in zip(ids, enc["offset_mapping"])]
    return ids, labels


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
