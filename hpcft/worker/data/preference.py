"""Preference rows for ``task: dpo``, ``orpo``, ``simpo`` and ``kto``: checked, rendered with the
model's chat template the same way SFT renders them, and tokenized for TRL's trainers.

What a row holds is :mod:`hpcft.core.pref_rows`' (the pre-flight checks a sample with the same
code). A string prompt is the user's turn and a string reply the assistant's; the messages form
is passed as it is. Rows are rendered by :class:`hpcft.worker.data.llm.Renderer` (the chat
template, or the plain template for base models), as an SFT run renders them, and split as TRL
1.16 splits conversational rows: the prompt is the generation prompt after ``prompt`` (what
the model sees at inference, shared by both replies), and each completion is everything the
template writes after it for that reply alone: a reply with reasoning and one without are
each well formed (Qwen3's empty think block, an R1 distill's closing ``</think>``, go with the
reply that needs them), and a multi-message reply is scored whole, never after the chosen
reply's own earlier turns. Token ids are those of each whole rendering. Prompts longer than
``preference.max_prompt_length`` keep their end; the reply is cut to fit ``max_seq_length``.

Outputs, the columns TRL's collators read: ``prompt_ids``, ``chosen_ids``, ``rejected_ids``
(pairwise) or ``prompt_ids``, ``completion_ids``, ``label`` (kto; a pairwise row gives one of
each). Pure Python over a tokenizer; ``datasets`` only to load and map.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from hpcft.core.chat import ConversationError
from hpcft.core.pref_rows import PAIRWISE_TASKS, prompt_messages, row_problem, turns
from hpcft.worker.errors import DataFormatError


@dataclass
class InitRun:
    """The run ``train.init_from`` continues (a folder, resolved on the login side)."""

    run_dir: Path
    model_dir: Path        # its saved adapter or model
    adapter: bool          # a LoRA adapter (else full weights)
    task: str

    @classmethod
    def read(cls, run_dir: str | Path) -> "InitRun":
        run_dir = Path(run_dir)
        try:
            m = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise DataFormatError(f"train.init_from {run_dir}: no readable metrics.json ({exc}); "
                                  "name a finished hpcft run") from None
        out = Path(str(m.get("output_dir") or ""))
        if not out.is_dir():
            raise DataFormatError(f"train.init_from {run_dir}: its model folder {out} is gone")
        return cls(run_dir, out, bool(m.get("adapter")), str(m.get("task")))

    @property
    def tokenizer_dir(self) -> Optional[Path]:
        """The tokenizer the run saved (it may carry a fixed EOS or template), if any."""
        return self.model_dir if (self.model_dir / "tokenizer_config.json").is_file() else None


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def check_rows(ds, task: str, where: str) -> None:
    """Every row, or a DataFormatError naming the first bad one (and how many more are bad)."""
    bad = []
    for i, row in enumerate(ds, 1):
        p = row_problem({k: v for k, v in row.items() if v is not None}, task)
        if p:
            bad.append(f"{where}, row {i}: {p}")
    if bad:
        n = len(bad) - 1
        more = f" ({n} more {'row' if n == 1 else 'rows'} like it)" if n else ""
        raise DataFormatError(bad[0] + more)


class Encoder:
    """Renders and tokenizes rows; one per run."""

    def __init__(self, tokenizer, renderer, max_len: int, max_prompt: Optional[int], system: Optional[str] = None):
        self.tok, self.renderer, self.max_len, self.system = tokenizer, renderer, max_len, system
        self.max_prompt = max_prompt or max_len // 2

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=not self.renderer.chat)["input_ids"]

    def prompt_messages(self, row: dict) -> list[dict]:
        return prompt_messages(row, self.system)

    def encode(self, prompt_msgs: list[dict], replies: list[Any], where: str = "a row"
               ) -> tuple[list[int], list[list[int]]]:
        """The prompt's ids (its end kept) and each reply's ids (cut to fit max_seq_length), as
        TRL 1.16 makes them: the prompt is the generation prompt, each completion is everything
        the template writes after it for that reply (a multi-message reply whole), and the ids
        are those of the whole rendering ``prompt + completion``, split where the tokenized
        prompt stops being a prefix of every one of them. Problems name the row (``where``)."""
        try:
            texts = [self.renderer.completion(prompt_msgs, turns(r, "assistant")) for r in replies]
        except (DataFormatError, ConversationError) as exc:
            raise DataFormatError(f"{where}: {exc}") from None
        prompt = self._ids(texts[0][0])
        fulls = [self._ids(p + c) for p, c in texts]
        n = min(_common_prefix(prompt, full) for full in fulls)
        prompt = prompt[:n][-self.max_prompt:]
        room = max(self.max_len - len(prompt), 1)
        return prompt, [full[n:][:room] for full in fulls]

    def pairwise(self, row: dict, where: str = "a row") -> dict:
        prompt, (chosen, rejected) = self.encode(self.prompt_messages(row), [row["chosen"], row["rejected"]], where)
        return {"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected}

    def unpaired(self, batch: dict, wheres: Optional[list[str]] = None) -> dict:
        """kto: one row per completion; a pairwise row gives a desirable and an undesirable one."""
        out: dict[str, list] = {"prompt_ids": [], "completion_ids": [], "label": []}
        keys = list(batch)
        for n, values in enumerate(zip(*batch.values())):
            row = {k: v for k, v in zip(keys, values) if v is not None}
            if "chosen" in row and "rejected" in row:
                pairs = [(row["chosen"], True), (row["rejected"], False)]
            else:
                pairs = [(row["completion"], bool(row["label"]))]
            where = wheres[n] if wheres else "a row"
            prompt, replies = self.encode(self.prompt_messages(row), [r for r, _ in pairs], where)
            for ids, (_, label) in zip(replies, pairs):
                out["prompt_ids"].append(prompt)
                out["completion_ids"].append(ids)
                out["label"].append(label)
        return out


def split(t, data_ref) -> tuple[Any, Any, str]:
    """(train rows, eval rows, eval split name): the job's splits, or a held-out slice (the same
    every run) when the data has only one; subsets applied. Every row is checked first, in the
    file's order (a problem names the row as it is numbered there)."""
    from hpcft.worker.data.mix import split_rows
    from hpcft.worker.data.staged import load_raw

    return split_rows(load_raw(data_ref), t, t.dataset, check=lambda rows, where: check_rows(rows, t.task, where))


def tokenized(t, encoder: Encoder, ds, desc: str):
    """The rows as TRL's token columns (kto: shuffled once with the seed, then read in order:
    its KL term pairs neighbours in a batch). A row the template cannot render is a
    DataFormatError naming it (``dataset D, split S, row N``)."""
    name = f"dataset {t.dataset}, split {desc}"
    if t.task in PAIRWISE_TASKS:
        return ds.map(lambda row, i: encoder.pairwise(row, f"{name}, row {i + 1}"), with_indices=True,
                      remove_columns=ds.column_names, desc=f"tokenize {desc}")
    out = ds.map(lambda batch, idx: encoder.unpaired(batch, [f"{name}, row {i + 1}" for i in idx]), batched=True,
                 with_indices=True, remove_columns=ds.column_names, desc=f"tokenize {desc}")
    return out.shuffle(seed=t.seed).flatten_indices()


def tokens_per_epoch(ds) -> int:
    """The tokens the policy reads in one epoch (prompt + each reply)."""
    if "chosen_ids" in ds.column_names:
        return sum(2 * len(p) + len(c) + len(r) for p, c, r in zip(ds["prompt_ids"], ds["chosen_ids"],
                                                                   ds["rejected_ids"]))
    return sum(len(p) + len(c) for p, c in zip(ds["prompt_ids"], ds["completion_ids"]))
