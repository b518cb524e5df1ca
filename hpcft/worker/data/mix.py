"""The data phase of ``task: causal-lm``: every dataset of ``train.dataset`` loaded in its own
format, split, tokenized, mixed, and packed when asked.

**Mixing.** ``train.dataset`` is one name or a list. A list without weights is concatenated
(each dataset once, as LLaMA-Factory's default ``mix_strategy: concat``). With weights, the
mix is deterministic by-weight sampling: the mixed training set has as many examples as the
datasets together (after ``train_subset``), and dataset *i* contributes ``total × wᵢ / Σw`` of
them (a dataset with no weight counts 1): drawn without replacement when it has that many,
else all of its examples repeated, the rest drawn, all with the job's seed, so a rerun and a
requeue see the same examples. The mix is made of tokenized examples, so each dataset keeps
its own format (alpaca beside messages beside ShareGPT). Evaluation uses each dataset's own
held-out part, unweighted. A ``text`` dataset's examples are its ``max_seq_length`` blocks.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from hpcft.worker.console import log
from hpcft.worker.data import llm as ld
from hpcft.worker.data.staged import load_raw


@dataclass
class SftData:
    train: Any                                   # datasets.Dataset: input_ids, labels (+ position_ids when packed)
    eval: Any
    prompts: list[tuple[dict, str]]              # held-out (row, format) pairs: the prompts for samples.jsonl
    real_tokens: int
    info: dict = field(default_factory=dict)     # what metrics.json says about the data


def mix_counts(sizes: list[int], weights: list[Optional[float]]) -> list[int]:
    """How many training examples each dataset contributes (see the module docstring)."""
    if all(w is None for w in weights):
        return list(sizes)
    ws = [1.0 if w is None else float(w) for w in weights]
    total, wsum = sum(sizes), sum(ws)
    raw = [total * w / wsum for w in ws]
    counts = [int(x) for x in raw]
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - counts[i], reverse=True)[:total - sum(counts)]:
        counts[i] += 1  # largest remainders, so the counts add up to the total
    return counts


def mix_indices(size: int, count: int, seed: int) -> list[int]:
    """``count`` example indices of a dataset of ``size``: without replacement when it has that
    many, else every index repeated and the rest drawn; deterministic for a seed."""
    r = random.Random(seed)
    whole, rest = divmod(count, size) if size else (0, 0)
    return [i for _ in range(whole) for i in range(size)] + sorted(r.sample(range(size), rest))


def split_rows(dd, t, name: str, check: Optional[Callable[[Any, str], None]] = None):
    """(train rows, eval rows, eval split name) of one dataset: the job's splits, or a held-out
    slice (the same every run) when it has only one, or no eval rows (``eval_split: none``);
    subsets applied. ``check(rows, where)``
    sees every row of both splits first (preference rows are checked in the file's order)."""
    if t.train_split not in dd:
        raise ld.DataFormatError(f"dataset {name}: no split {t.train_split!r}; it has: {', '.join(dd)} "
                                 "(set train.train_split)")
    raw_train = dd[t.train_split]
    if check:
        check(raw_train, f"dataset {name}, split {t.train_split}")
    if t.eval_split == "none":   # every row trains; nothing is held out (LLaMA-Factory without val_size)
        raw_eval = raw_train.select([])
        eval_name = "none"
        if t.train_subset and t.train_subset < len(raw_train):
            raw_train = raw_train.shuffle(seed=t.seed).select(range(t.train_subset))
        return raw_train, raw_eval, eval_name
    eval_name = t.eval_split or next((s for s in ("validation", "test") if s in dd and s != t.train_split), None)
    if eval_name:
        if eval_name not in dd:
            raise ld.DataFormatError(f"dataset {name}: no split {eval_name!r}; it has: {', '.join(dd)}")
        raw_eval = dd[eval_name]
        if check:
            check(raw_eval, f"dataset {name}, split {eval_name}")
    else:  # the same held-out slice every run (also the prompts for samples.jsonl)
        parts = raw_train.train_test_split(test_size=min(max(0.1, 2 / max(len(raw_train), 1)), 0.5,
                                                         500 / max(len(raw_train), 1)), seed=t.seed)
        raw_train, raw_eval, eval_name = parts["train"], parts["test"], f"{t.train_split}[held-out]"
    if t.train_subset and t.train_subset < len(raw_train):
        raw_train = raw_train.shuffle(seed=t.seed).select(range(t.train_subset))
    if t.eval_subset and t.eval_subset < len(raw_eval):
        raw_eval = raw_eval.shuffle(seed=t.seed).select(range(t.eval_subset))
    return raw_train, raw_eval, eval_name


def _join_input(ds, join: str):
    """Alpaca rows with ``input`` joined into ``instruction`` by ``join`` (a dataset entry's
    ``alpaca_join``; LLaMA-Factory's one newline) rather than hpcft's two newlines."""
    if "input" not in ds.column_names or len(ds) == 0:
        return ds

    def joined(row):
        extra = row.get("input")
        return {"instruction": f"{row.get('instruction') or ''}{join}{extra}" if extra else row.get("instruction"),
                "input": ""}

    return ds.map(joined, desc="alpaca_join")


ROWS_PER_PROC = 256   # the tokenizing map's processes (num_proc): at least this many rows each


def tokenize(ds, tokenizer, renderer: ld.Renderer, fmt: str, max_len: int, system: Optional[str],
             name: str, desc: str, keep_last: bool = True, isolate: bool = False, num_proc: Optional[int] = None):
    """Tokenized examples of a raw split (a row may give several; see hpcft.core.chat); rows
    whose reply was cut away by max_len are dropped. Problems name the dataset and the row.
    ``text`` rows are documents: concatenated and cut into max_len blocks (:func:`ld.text_blocks`;
    ``keep_last``: the last, shorter block; ``isolate``: per-document positions, for packing;
    ``num_proc``: processes for the map, the preprocess job's CPUs)."""

    def encode(batch, idx):
        out: dict[str, list] = {"input_ids": [], "labels": []}
        rows = [dict(zip(batch, vals, strict=True)) for vals in zip(*batch.values(), strict=True)]
        for row, i in zip(rows, idx, strict=True):
            for ex in ld.encode(tokenizer, renderer, row, fmt, max_len, system, where=f"{name} {desc} row {i + 1}"):
                if any(x != ld.IGNORE for x in ex["labels"]):
                    out["input_ids"].append(ex["input_ids"])
                    out["labels"].append(ex["labels"])
        return out

    procs = min(num_proc or 1, len(ds) // ROWS_PER_PROC)   # a process costs more than a few rows
    out = ds.map(encode, batched=True, with_indices=True, remove_columns=ds.column_names,
                 desc=f"tokenize {name} {desc}", num_proc=procs if procs > 1 else None)
    if fmt != "text":
        return out
    import datasets

    blocks = ld.text_blocks(out["input_ids"], max_len, keep_last, isolate)
    columns = ("input_ids", "labels", "position_ids") if isolate else ("input_ids", "labels")
    return datasets.Dataset.from_dict({k: [b[k] for b in blocks] for k in columns})


def _same_columns(parts: list, packing: bool) -> list:
    """Datasets to concatenate with the same columns: under packing, text blocks carry
    position_ids, so the other formats' examples get theirs (0..n-1, what pack() gives them)."""
    if not packing or len({tuple(sorted(p.column_names)) for p in parts}) == 1:
        return parts
    return [p if "position_ids" in p.column_names else
            p.map(lambda ex: {"position_ids": list(range(len(ex["input_ids"])))}, desc="positions") for p in parts]


def load_sft_data(t, refs: list, tokenizer, renderer: ld.Renderer, num_proc: Optional[int] = None) -> SftData:
    """Every dataset of the job (``refs``: their staged folders or files, in ``train.dataset``
    order), tokenized in its own format, mixed by weight, packed when ``train.packing``."""
    import datasets

    entries = t.dataset_entries
    trains, evals, prompts, parts = [], [], [], []
    for entry, ref in zip(entries, refs, strict=True):
        raw_train, raw_eval, eval_name = split_rows(load_raw(ref), t, entry.name)
        fmt = ld.detect_format(raw_train.column_names, entry.data_format or t.data_format)
        if fmt == "alpaca" and entry.alpaca_join is not None:
            raw_train, raw_eval = (_join_input(x, entry.alpaca_join) for x in (raw_train, raw_eval))
        blocks = {"keep_last": (t.text_last_block or "keep") == "keep", "isolate": bool(t.packing),
                  "num_proc": num_proc}
        tr = tokenize(raw_train, tokenizer, renderer, fmt, t.max_seq_length, t.system_prompt, entry.name, "train",
                      **blocks)
        ev = tokenize(raw_eval, tokenizer, renderer, fmt, t.max_seq_length, t.system_prompt, entry.name, eval_name,
                      **{**blocks, "keep_last": True})  # evaluation keeps every token
        if len(tr) == 0 and fmt == "text":
            raise ld.DataFormatError(f"dataset {entry.name}: its text is shorter than one block of max_seq_length "
                                     f"{t.max_seq_length} tokens, and text_last_block: drop drops it; set "
                                     "train.text_last_block: keep or lower train.max_seq_length")
        if len(tr) == 0:
            raise ld.DataFormatError(f"dataset {entry.name}: no example has a response within max_seq_length "
                                     f"{t.max_seq_length}; raise train.max_seq_length")
        trains.append(tr)
        evals.append(ev)
        prompts.append([(row, fmt) for row in raw_eval])
        parts.append({"dataset": entry.name, "format": fmt, "rows": len(raw_train), "examples": len(tr),
                      "eval_examples": len(ev), "eval_split": eval_name})
    counts = mix_counts([len(x) for x in trains], [e.weight for e in entries])
    mixed = [tr if n == len(tr) else tr.select(mix_indices(len(tr), n, t.seed + i))
             for i, (tr, n) in enumerate(zip(trains, counts, strict=True))]
    for part, n in zip(parts, counts, strict=True):
        part["mixed"] = n
    mixed, evals = _same_columns(mixed, bool(t.packing)), _same_columns(evals, bool(t.packing))
    train_ds = mixed[0] if len(mixed) == 1 else datasets.concatenate_datasets(mixed).shuffle(seed=t.seed)
    eval_ds = evals[0] if len(evals) == 1 else datasets.concatenate_datasets(evals)
    n_real = ld.real_tokens(train_ds)
    examples = len(train_ds)
    if t.packing:
        train_ds = datasets.Dataset.from_list(ld.pack(list(train_ds), t.max_seq_length))
    # held-out prompts for samples.jsonl: the datasets in turn
    order = [group[i] for i in range(max(len(x) for x in prompts)) for group in prompts if i < len(group)]
    fmts = sorted({p["format"] for p in parts})
    shares = " + ".join(f"{p['dataset']} ({p['format']}, {p['mixed']} of {p['examples']})" for p in parts)
    log(f"data: {shares}" if len(parts) > 1 else f"data: {parts[0]['format']} format")
    log(f"{examples} train / {len(eval_ds)} eval examples ({', '.join(p['eval_split'] for p in parts)}), prompts "
        f"with {renderer.name}, {n_real} train tokens"
        f"{f', packed into {len(train_ds)} sequences' if t.packing else ''}")
    info = {"format": fmts[0] if len(fmts) == 1 else "+".join(fmts), "train_examples": examples,
            "eval_examples": len(eval_ds), "eval_split": parts[0]["eval_split"] if len(parts) == 1 else
            ", ".join(p["eval_split"] for p in parts), "packing": bool(t.packing), "template": renderer.name,
            "train_on": renderer.train_on}
    if len(parts) > 1:
        info["mix"] = parts
    return SftData(train_ds, eval_ds, order, n_real, info)
