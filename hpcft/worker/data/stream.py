"""``train.streaming: true``: a ``data_format: text`` corpus read as a stream, for corpora larger
than host memory (the rules: :mod:`hpcft.core.streaming`).

The documents are read in order (``datasets``' streaming reader over the staged files: parquet
row groups, JSON lines), tokenized one at a time, each followed by the EOS, and cut into blocks
of exactly ``max_seq_length`` tokens, as the in-memory text path cuts them
(:func:`hpcft.worker.data.packing.text_blocks`: the same blocks, no token lost, the last short
block kept or dropped, per-document positions under ``packing: true``). Nothing is cached and
nothing but the current document and block is held.

**The position is checkpointed.** Every block the stream yields is remembered with the position
after it: (pass over the corpus, row, token offset in that row, blocks and tokens so far). When
the Trainer saves a checkpoint, the position after exactly the blocks its steps consumed
(steps x batch x accumulation x ranks: under several ranks only rank 0 reads, as accelerate
dispatches an iterable dataset's batches) is written into the checkpoint as ``hpcft-stream.json``,
before hpcft marks the checkpoint complete. A requeued job reads it from the checkpoint it
resumes from, skips the rows before it without tokenizing them, drops the tokens of the row in
progress that were already trained, and so trains on the blocks it would have seen. The
Trainer's own skip (re-reading every consumed batch) is switched off.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch

from hpcft.core.atomic import atomic_write_json
from hpcft.worker.data.packing import blocks

STATE = "hpcft-stream.json"
START = {"pass": 0, "row": 0, "offset": 0, "blocks": 0, "tokens": 0}


def open_rows(ref, split: str):
    """The rows of one staged dataset (or local data file) as a ``datasets`` stream."""
    import datasets

    from hpcft.worker.data.staged import file_builder

    path = Path(ref.path)
    if path.is_file():
        builder, kw = file_builder(path)
        return datasets.load_dataset(builder, data_files={"train": str(path)}, split="train", streaming=True, **kw)
    return datasets.load_dataset(str(path), ref.config, split=split, streaming=True)


class TextStream(torch.utils.data.IterableDataset):
    """The training set of a streamed run (see the module docstring). ``rows()`` opens the corpus
    anew for each pass; ``encode(row)`` gives a document's ids (its EOS included); ``resume()``
    gives the position to start from, read when the first pass starts (the Trainer has chosen
    its checkpoint by then)."""

    def __init__(self, rows: Callable[[], Any], encode: Callable[[dict], list[int]], max_len: int, *,
                 keep_last: bool = True, isolate: bool = False, resume: Callable[[], Optional[dict]] = lambda: None,
                 keep: int = 4096):
        super().__init__()
        self.rows, self.encode, self.max_len = rows, encode, max_len
        self.keep_last, self.isolate, self.resume, self.keep = keep_last, isolate, resume, keep
        self.start: Optional[dict] = None       # where this process started (its first pass)
        self.last: dict = dict(START)           # the position after the newest block yielded
        self.positions: OrderedDict[int, dict] = OrderedDict()

    def _remember(self, state: dict) -> None:
        self.last = state
        self.positions[state["blocks"]] = state
        while len(self.positions) > self.keep:
            self.positions.popitem(last=False)

    def __iter__(self) -> Iterator[dict]:
        """Blocks without end: at the corpus' end the next pass starts (its blocks follow the last
        short block of the one before), so the Trainer sees one endless epoch that ``max_steps``
        ends, every step has exactly its blocks, and the blocks a checkpoint consumed are
        steps x blocks per step."""
        from hpcft.worker.errors import DataError

        if self.start is None:
            self.start = dict(self.resume() or START)
            self._remember(self.start)
        at = self.last
        while True:
            rows = self.rows()
            if at["row"]:
                rows = rows.skip(at["row"])   # read, not tokenized
            docs = ((at["row"] + k, self.encode(r)) for k, r in enumerate(rows))
            n, tokens = at["blocks"], at["tokens"]
            for block, row, offset in blocks(docs, self.max_len, self.keep_last, self.isolate, at["offset"]):
                n, tokens = n + 1, tokens + len(block["input_ids"])
                self._remember({"pass": at["pass"], "row": row, "offset": offset, "blocks": n, "tokens": tokens})
                yield block
            if n == at["blocks"] and not at["row"] and not at["offset"]:
                raise DataError("train.streaming: a whole pass over the corpus gave no block to train on "
                                "(no text in its rows, or only a short last block with text_last_block: drop)")
            at = {**self.last, "pass": at["pass"] + 1, "row": 0, "offset": 0}

    def state_after(self, consumed: int) -> dict:
        """The position after ``consumed`` blocks (those the saved steps trained on)."""
        state = self.positions.get(consumed)
        if state is None:
            have = f"{next(iter(self.positions))}..{next(reversed(self.positions))}" if self.positions else "none"
            raise RuntimeError(f"the stream's position after block {consumed} is not known (remembered: {have}); "
                               "the checkpoint would not resume exactly")
        return state


def save_position(stream: TextStream, folder: Path, blocks_per_step: int, global_step: int) -> None:
    """Into a checkpoint folder: the position after the blocks its ``global_step`` steps trained on."""
    atomic_write_json(Path(folder) / STATE, stream.state_after(global_step * blocks_per_step))


def read_position(checkpoint: Optional[Path]) -> Optional[dict]:
    """The position a checkpoint recorded; None without a checkpoint. A checkpoint of a streamed
    run without one cannot resume exactly: an error, not a silent restart from the start."""
    if checkpoint is None:
        return None
    path = Path(checkpoint) / STATE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"{checkpoint.name} has no readable stream position ({path.name}: {exc}); it cannot "
                           "resume where it stopped. Remove the run's checkpoints folder to start over") from None
    if not isinstance(state, dict) or any(not isinstance(state.get(k), int) or state[k] < 0 for k in START):
        raise RuntimeError(f"{path}: not a stream position ({str(state)[:200]})")
    return state
