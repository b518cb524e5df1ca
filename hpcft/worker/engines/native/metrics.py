"""Eval metrics: the staged ``evaluate`` module when the job names one, else numpy built-ins.

The built-ins give the same numbers as the GLUE metric (accuracy, binary F1, Matthews
correlation, Pearson/Spearman) without scipy/sklearn or any staged file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np


def accuracy(p, y) -> float:
    return float((np.asarray(p) == np.asarray(y)).mean()) if len(y) else 0.0


def f1_binary(p, y) -> float:
    p, y = np.asarray(p), np.asarray(y)
    tp = float(((p == 1) & (y == 1)).sum())
    fp = float(((p == 1) & (y != 1)).sum())
    fn = float(((p != 1) & (y == 1)).sum())
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def f1_macro(p, y) -> float:
    p, y = np.asarray(p), np.asarray(y)
    scores = []
    for c in np.union1d(p, y):
        tp = float(((p == c) & (y == c)).sum())
        fp = float(((p == c) & (y != c)).sum())
        fn = float(((p != c) & (y == c)).sum())
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


def matthews(p, y) -> float:
    p, y = np.asarray(p), np.asarray(y)
    classes = np.union1d(p, y)
    cm = np.array([[np.sum((y == a) & (p == b)) for b in classes] for a in classes], float)
    t, q, c, s = cm.sum(axis=1), cm.sum(axis=0), np.trace(cm), cm.sum()
    denom = np.sqrt((s * s - t @ t) * (s * s - q @ q))
    return 0.0 if denom == 0 else float((c * s - t @ q) / denom)


def _rank(x):
    x = np.asarray(x, float)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):
        m = x == v
        ranks[m] = ranks[m].mean()
    return ranks


def pearson(p, y) -> float:
    p, y = np.asarray(p, float), np.asarray(y, float)
    if len(p) < 2 or p.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(p, y)[0, 1])


BUILTIN: dict[str, Callable] = {
    "accuracy": accuracy, "f1": f1_binary, "f1_macro": f1_macro, "matthews_correlation": matthews,
    "pearson": pearson, "spearmanr": lambda p, y: pearson(_rank(p), _rank(y)),
}


def builtin_names(num_labels: int, regression: bool, preset_metrics: Optional[tuple] = None) -> list[str]:
    if preset_metrics:
        return list(preset_metrics)
    if regression:
        return ["pearson", "spearmanr"]
    return ["accuracy", "f1"] if num_labels == 2 else ["accuracy", "f1_macro"]


def load_staged(script: Path, config: Optional[str]):
    """evaluate.load on the staged module file (never the hub). With the config's ``trusted_code``
    set, a staged metric's code must be pinned there by sha256: it is read and checked once, and
    what is loaded is a private copy of exactly those bytes (:func:`hpcft.core.trusted_code.checked_copy`;
    :class:`~hpcft.core.trusted_code.UntrustedCode` names each script that is not pinned)."""
    import tempfile

    from hpcft.core.config import load_settings
    from hpcft.core.trusted_code import checked_copy

    settings = load_settings()
    with tempfile.TemporaryDirectory(prefix="hpcft-metric-") as private:
        loaded = checked_copy(Path(script), settings.cache, settings.trusted_code, Path(private))
        import evaluate

        return evaluate.load(str(loaded), config) if config else evaluate.load(str(loaded))


def make_compute_metrics(*, regression: bool, names: list[str], module=None) -> Callable:
    """A Trainer ``compute_metrics``: predictions -> {metric: value}."""

    def compute(eval_pred) -> dict:
        logits, labels = eval_pred.predictions, eval_pred.label_ids
        if isinstance(logits, tuple):
            logits = logits[0]
        logits = np.asarray(logits, dtype=np.float32)
        preds = logits.reshape(-1) if regression else logits.argmax(-1)
        if module is not None:
            out = module.compute(predictions=preds, references=labels)
            return {k: float(v) for k, v in out.items() if isinstance(v, (int, float, np.floating, np.integer))}
        return {n: BUILTIN[n](preds, labels) for n in names}

    return compute


def headline_of(names: list[str], preset_headline: Optional[str], produced: dict) -> str:
    """The metric hpcft runs/show lead with: the preset's, else the first the metric produced."""
    keys = [k.removeprefix("eval_") for k in produced]
    if preset_headline and preset_headline in keys:
        return preset_headline
    for n in [*names, "accuracy", "f1", "matthews_correlation", "pearson"]:
        if n in keys:
            return n
    rest = [k for k in keys if k not in ("loss", "runtime", "samples_per_second", "steps_per_second", "epoch")]
    return rest[0] if rest else "loss"
