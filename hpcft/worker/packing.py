"""Packing for ``task: causal-lm``: several examples in one sequence, each seeing only itself.

:func:`pack` concatenates whole examples into sequences of up to ``max_seq_length`` tokens with
``position_ids`` restarting at 0 for each example, and the :class:`Collator` sends packed
batches **without** an ``attention_mask``. transformers then reads the example boundaries from
the position ids (``masking_utils.find_packed_sequence_indices``) and builds a block-diagonal
causal mask for sdpa/eager attention, or passes varlen boundaries to FlashAttention: no token
attends to another example, and rotary positions are those of the example alone, as with
transformers' ``DataCollatorWithFlattening``. (transformers reads the boundaries only when the
forward pass has no KV cache, as in training: ``use_cache=False``.) The first label of each packed example is -100,
so the last token of one example is never trained to predict the first token of the next.
Unpacked batches are padded to their longest example and carry the usual attention mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from .errors import WorkerError

IGNORE = -100


class PackingError(WorkerError, ValueError):
    """``packing: true`` on a model whose attention would cross example boundaries."""


def check_model(model) -> None:
    """Packing relies on transformers' own attention code reading the example boundaries from
    the position ids; a model running its repository's code (``trust_remote_code``) builds its own
    causal mask, and its packed examples would attend to each other: refused, in one line."""
    module = type(model).__module__
    if not module.startswith("transformers."):
        raise PackingError(f"packing: true needs transformers' own model code, which keeps packed examples apart; "
                           f"{type(model).__name__} runs the model's own code ({module}), whose attention would "
                           "cross example boundaries: set packing: false")


def pack(examples: list[dict], max_len: int) -> list[dict]:
    """Whole tokenized examples (``input_ids``, ``labels``) concatenated, first fit in order, into
    sequences of at most max_len tokens (an example longer than max_len was already truncated).
    Each sequence gets ``position_ids`` restarting at 0 per example and no attention mask."""
    out: list[dict] = []
    cur: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
    for ex in examples:
        n = len(ex["input_ids"])
        if not n:
            continue
        if cur["input_ids"] and len(cur["input_ids"]) + n > max_len:
            out.append(cur)
            cur = {"input_ids": [], "labels": [], "position_ids": []}
        cur["input_ids"] += ex["input_ids"]
        cur["labels"] += [IGNORE] + list(ex["labels"][1:])
        cur["position_ids"] += list(range(n))
    if cur["input_ids"]:
        out.append(cur)
    return out


@dataclass
class Collator:
    """Pads a batch to its longest sequence (a multiple of ``multiple`` on accelerators); labels
    pad -100. Packed sequences (with ``position_ids``) get no attention mask, so each example
    attends only to itself; padding then gets position 0, a one-token sequence of its own."""

    pad_id: int
    multiple: Optional[int] = None

    def __call__(self, batch: list[dict]) -> dict:
        import torch

        longest = max(len(b["input_ids"]) for b in batch)
        if self.multiple:
            longest = -(-longest // self.multiple) * self.multiple
        packed = "position_ids" in batch[0]
        pad: dict[str, Any] = {"input_ids": self.pad_id, "labels": IGNORE, "position_ids": 0}
        out = {}
        for k in ("input_ids", "labels", "position_ids") if packed else ("input_ids", "labels"):
            out[k] = torch.tensor([list(b[k]) + [pad[k]] * (longest - len(b[k])) for b in batch], dtype=torch.long)
        if not packed:
            out["attention_mask"] = torch.tensor([[1] * len(b["input_ids"]) + [0] * (longest - len(b["input_ids"]))
                                                  for b in batch], dtype=torch.long)
        return out
