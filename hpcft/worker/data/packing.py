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

:func:`text_blocks` is ``data_format: text``'s: the documents concatenated (the EOS between them)
and cut into ``max_seq_length`` blocks, with per-document positions under ``packing: true``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional

from hpcft.worker.errors import WorkerError

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
    """Whole tokenized examples (``input_ids``, ``labels``) packed into sequences of at most
    max_len tokens (an example longer than max_len was already truncated), best fit decreasing:
    the longest first, each into the open sequence it fills the most (fewest tokens left over),
    a new one only where none has room. With instruction data (many short answers, a few long
    ones) that fills nearly every sequence, so an epoch is fewer, fuller batches than packing in
    the data's order gives. Each sequence gets ``position_ids`` restarting at 0 per example and
    no attention mask; the examples of a sequence are in packing order (longest first), and
    the sequences are shuffled by the sampler."""
    lengths = [len(ex["input_ids"]) for ex in examples]
    out: list[dict] = []
    for members in best_fit_decreasing(lengths, max_len):
        cur: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
        for i in members:
            ex = examples[i]
            cur["input_ids"] += ex["input_ids"]
            cur["labels"] += [IGNORE] + list(ex["labels"][1:])
            # a text block (text_blocks) brings its own positions: one segment per document
            cur["position_ids"] += list(ex.get("position_ids") or range(lengths[i]))
        out.append(cur)
    return out


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into bins of at most ``capacity`` (every length is at most
    ``capacity``; zero lengths are left out), best fit decreasing, in O(n log capacity): a
    min-segment-tree over the remaining space says the smallest space that still fits."""
    size = 1
    while size < capacity + 1:
        size *= 2
    inf = capacity + 1
    tree = [inf] * (2 * size)          # leaf s: s while some bin has exactly s left, else inf
    open_bins: list[list[int]] = [[] for _ in range(capacity + 1)]   # remaining space -> bin ids
    bins: list[list[int]] = []

    def set_leaf(s: int, value: int) -> None:
        i = s + size
        tree[i] = value
        while i > 1:
            i //= 2
            tree[i] = min(tree[2 * i], tree[2 * i + 1])

    def smallest_at_least(n: int) -> int:
        lo, hi, best = n + size, capacity + size + 1, inf
        while lo < hi:
            if lo & 1:
                best = min(best, tree[lo])
                lo += 1
            if hi & 1:
                hi -= 1
                best = min(best, tree[hi])
            lo //= 2
            hi //= 2
        return best

    for i in sorted((i for i, n in enumerate(lengths) if n > 0), key=lambda i: -lengths[i]):
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"an example of {n} tokens does not fit a sequence of {capacity}")
        space = smallest_at_least(n)
        if space == inf:
            b, space = len(bins), capacity
            bins.append([])
        else:
            b = open_bins[space].pop()
            if not open_bins[space]:
                set_leaf(space, inf)
        bins[b].append(i)
        left = space - n
        if left > 0:
            if not open_bins[left]:
                set_leaf(left, left)
            open_bins[left].append(b)
    return bins


def text_blocks(docs: Iterable[list[int]], max_len: int, keep_last: bool = True, isolate: bool = False) -> list[dict]:
    """``data_format: text``: the documents' ids (each ending with the EOS) concatenated in order
    and cut into blocks of exactly ``max_len`` tokens, so no token is lost; the last, shorter
    block is kept or dropped (``keep_last``). Every token is trained. With ``isolate`` (``packing:
    true``) each block carries ``position_ids`` restarting at 0 where a document starts (and at
    the block's start), so, as with packed examples, no document attends to another, and a
    document's first token is not trained as the continuation of the one before (-100)."""
    return [b for b, _, _ in blocks(enumerate(docs), max_len, keep_last, isolate)]


def blocks(docs: Iterable[tuple[int, list[int]]], max_len: int, keep_last: bool = True, isolate: bool = False,
           first_offset: int = 0) -> Iterator[tuple[dict, int, int]]:
    """``(block, row, offset)``: ``text_blocks``' blocks of ``docs`` (``(row, ids)`` pairs), each with
    where the next block starts: ``offset`` tokens into ``row`` (``offset == len(ids)``: that row is
    done). The first document starts ``first_offset`` tokens in (a resumed stream)."""
    cur: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
    row, i = -1, 0

    def close() -> dict:
        nonlocal cur
        out = cur if isolate else {"input_ids": cur["input_ids"], "labels": cur["labels"]}
        cur = {"input_ids": [], "labels": [], "position_ids": []}
        return out

    for n, (row, ids) in enumerate(docs):
        i = first_offset if n == 0 else 0
        while i < len(ids):
            piece = list(ids[i:i + max_len - len(cur["input_ids"])])
            cur["input_ids"] += piece
            cur["labels"] += [IGNORE] + piece[1:] if isolate and i == 0 else piece
            cur["position_ids"] += range(len(piece))
            i += len(piece)
            if len(cur["input_ids"]) == max_len:
                yield close(), row, i
    if cur["input_ids"] and keep_last:
        yield close(), row, i


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
