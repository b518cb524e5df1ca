"""Load a staged dataset (or a local CSV/JSON/parquet file) and tokenize it, offline.

Problems with the data are reported in the user's terms: which split or column is
missing and which ones the dataset does have.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hpcft.core.assets import DATA_FILE_SUFFIXES, JobAsset
from hpcft.worker.engines.native.presets import Preset
from hpcft.worker.errors import DataError


@dataclass
class TaskData:
    train: Any                         # datasets.Dataset, tokenized
    eval: Any
    text_columns: list[str]
    label_column: str
    num_labels: int
    regression: bool
    label_names: Optional[list[str]]
    eval_split: str
    info: dict = field(default_factory=dict)


def file_builder(path: Path) -> tuple[str, dict]:
    """The ``datasets`` builder and its arguments for a local data file (by its suffix)."""
    builder = DATA_FILE_SUFFIXES.get(path.suffix.lower())
    if builder is None:
        raise DataError(f"{path}: unknown data file type (use .csv, .tsv, .json, .jsonl or .parquet)")
    return builder, ({"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {})


def load_raw(ref: JobAsset, cache_dir: Optional[str] = None):
    """A DatasetDict from a staged dataset folder or a local data file."""
    import datasets

    path = Path(ref.path)
    if path.is_file():
        builder, kw = file_builder(path)
        return datasets.load_dataset(builder, data_files={"train": str(path)}, cache_dir=cache_dir, **kw)
    try:
        return datasets.load_dataset(str(path), ref.config, cache_dir=cache_dir)
    except ValueError as exc:
        if "BuilderConfig" in str(exc) or "config" in str(exc).lower():
            raise DataError(f"dataset {ref.name}: config {ref.config!r} is not in the staged copy ({exc}); "
                            f"stage it with: hpcft stage {ref.name}/<config>") from None
        raise


def _pick_eval_split(dd, label_column: str, wanted: Optional[str], train_split: str) -> Optional[str]:
    if wanted:
        if wanted not in dd:
            raise DataError(f"eval_split {wanted!r} not in the dataset; it has splits: {', '.join(dd)}")
        return wanted
    for name in ("validation", "validation_matched", "test"):
        if name in dd and name != train_split:
            col = dd[name][label_column] if label_column in dd[name].column_names else []
            if len(col) and all(v == -1 for v in col[:50]):
                continue  # GLUE-style test split without labels
            return name
    return None


def prepare(train_spec, ref: JobAsset, preset: Optional[Preset], tokenizer, *, cache_dir: Optional[str] = None,
            is_main: bool = True) -> TaskData:
    """Columns, labels, splits and subsets from the job (preset fills the gaps), tokenized."""
    t = train_spec
    dd = load_raw(ref, cache_dir)
    if t.train_split not in dd:
        raise DataError(f"dataset {ref.name}: no split {t.train_split!r}; it has: {', '.join(dd)} "
                        "(set train.train_split)")
    train = dd[t.train_split]
    cols = train.column_names
    text_columns = list(t.text_columns or (preset.text_columns if preset else ()) or _guess_text(train))
    label_column = t.label_column or (preset.label_column if preset else None) or _guess_label(cols)
    missing = [c for c in [*text_columns, label_column] if c not in cols]
    if missing:
        raise DataError(f"dataset {ref.name} ({t.train_split} split) has no column "
                        f"{', '.join(repr(c) for c in missing)}; it has: {', '.join(cols)}. "
                        "Set train.text_columns and train.label_column to the right names.")

    eval_split = _pick_eval_split(dd, label_column, t.eval_split or (preset.eval_split if preset and
                                  preset.eval_split in dd else None), t.train_split)
    if eval_split is None:  # hold out a slice of train, the same one every run
        parts = train.train_test_split(test_size=min(0.1, 2000 / max(len(train), 1)), seed=t.seed)
        train, evald, eval_split = parts["train"], parts["test"], f"{t.train_split}[held-out]"
    else:
        evald = dd[eval_split]
        miss = [c for c in [*text_columns, label_column] if c not in evald.column_names]
        if miss:
            raise DataError(f"dataset {ref.name} ({eval_split} split) has no column {', '.join(miss)}; "
                            f"it has: {', '.join(evald.column_names)}")

    if t.train_subset and t.train_subset < len(train):
        train = train.shuffle(seed=t.seed).select(range(t.train_subset))
    if t.eval_subset and t.eval_subset < len(evald):
        evald = evald.shuffle(seed=t.seed).select(range(t.eval_subset))

    regression = bool(preset.regression) if preset else False
    feature = train.features.get(label_column)
    label_names = list(feature.names) if hasattr(feature, "names") else None
    if not regression and feature is not None and getattr(feature, "dtype", "") in ("float32", "float64"):
        regression = t.num_labels == 1 or (t.num_labels is None and preset is None)
    mapping = None
    if regression:
        num_labels = 1
    elif label_names:
        num_labels = t.num_labels or len(label_names)
    else:
        values = sorted(set(train[label_column]) | set(evald[label_column]), key=lambda v: (str(type(v)), v))
        if values and not all(isinstance(v, int) for v in values):  # string labels: pos/neg, spam/ham
            label_names = [str(v) for v in values]
            mapping = {v: i for i, v in enumerate(values)}
        num_labels = t.num_labels or (len(values) if mapping else (max(values) + 1 if values else 2))
    if t.num_labels and label_names and t.num_labels < len(label_names):
        raise DataError(f"num_labels is {t.num_labels} but column {label_column!r} has {len(label_names)} "
                        f"classes ({', '.join(label_names[:10])})")

    max_len = min(t.max_seq_length, getattr(tokenizer, "model_max_length", t.max_seq_length) or t.max_seq_length)

    def encode(batch):
        texts = [batch[c] for c in text_columns]
        texts = [[("" if x is None else str(x)) for x in col] for col in texts]
        enc = tokenizer(*texts, truncation=True, max_length=max_len)
        labels = batch[label_column]
        if regression:
            enc["labels"] = [float(v) for v in labels]
        elif mapping is not None:
            enc["labels"] = [mapping[v] for v in labels]
        else:
            enc["labels"] = [int(v) for v in labels]
        return enc

    def tokenize(ds, desc):
        ds = ds.filter(lambda b: [v is not None and v != -1 for v in b[label_column]], batched=True,
                       desc=f"{desc}: drop unlabelled") if not regression else ds
        return ds.map(encode, batched=True, remove_columns=ds.column_names, desc=f"tokenize {desc}")

    train_tok = tokenize(train, "train")
    eval_tok = tokenize(evald, "eval")
    if len(train_tok) == 0:
        raise DataError(f"dataset {ref.name}: the {t.train_split} split has no labelled examples")
    if not regression:
        bad = [v for v in set(train_tok["labels"]) if v < 0 or v >= num_labels]
        if bad:
            raise DataError(f"labels {sorted(bad)[:5]} are outside 0..{num_labels - 1}; set train.num_labels")
    info = {"train_examples": len(train_tok), "eval_examples": len(eval_tok), "eval_split": eval_split,
            "text_columns": text_columns, "label_column": label_column, "num_labels": num_labels}
    return TaskData(train_tok, eval_tok, text_columns, label_column, num_labels, regression, label_names,
                    eval_split, info)


def _guess_text(ds) -> list[str]:
    for names in (["sentence1", "sentence2"], ["text"], ["sentence"], ["review"], ["content"]):
        if all(n in ds.column_names for n in names):
            return names
    strings = [n for n, f in ds.features.items() if getattr(f, "dtype", None) == "string"]
    if len(strings) in (1, 2):
        return strings
    raise DataError(f"cannot tell which columns hold the text; the dataset has: {', '.join(ds.column_names)}. "
                    "Set train.text_columns (one column, or two for sentence pairs).")


def _guess_label(cols: list[str]) -> str:
    for name in ("label", "labels", "target", "class", "score"):
        if name in cols:
            return name
    return "label"
