"""GLUE metric (hpcft test stand-in): same results as evaluate-metric/glue, numpy only.

The hub's glue.py imports scipy and sklearn; this one computes accuracy, F1,
Matthews correlation and Pearson/Spearman with numpy so it loads anywhere.
"""
import datasets
import evaluate
import numpy as np

_DESCRIPTION = "GLUE, the General Language Understanding Evaluation benchmark."
_CITATION = "Wang et al., GLUE: A Multi-Task Benchmark and Analysis Platform for NLU, 2019."
_KWARGS_DESCRIPTION = """
Args:
    predictions: list of predictions to score (int, or float for stsb).
    references: list of references, one per prediction.
Returns: accuracy (+ f1 for mrpc/qqp), matthews_correlation for cola,
    pearson and spearmanr for stsb.
"""
_CONFIGS = ["sst2", "mnli", "mnli_mismatched", "mnli_matched", "cola", "stsb", "mrpc", "qqp",
            "qnli", "rte", "wnli", "hans"]


def simple_accuracy(preds, labels):
    return float((np.asarray(preds) == np.asarray(labels)).mean())


def f1_binary(preds, labels):
    preds, labels = np.asarray(preds), np.asarray(labels)
    tp = float(((preds == 1) & (labels == 1)).sum())
    fp = float(((preds == 1) & (labels != 1)).sum())
    fn = float(((preds != 1) & (labels == 1)).sum())
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def matthews_corrcoef(preds, labels):
    # Multiclass MCC, as sklearn computes it, from the confusion matrix.
    preds, labels = np.asarray(preds), np.asarray(labels)
    classes = np.union1d(preds, labels)
    cm = np.array([[np.sum((labels == a) & (preds == b)) for b in classes] for a in classes], float)
    t, p, c, s = cm.sum(axis=1), cm.sum(axis=0), np.trace(cm), cm.sum()
    cov_ytyp = c * s - t @ p
    cov_ypyp = s * s - p @ p
    cov_ytyt = s * s - t @ t
    denom = np.sqrt(cov_ytyt * cov_ypyp)
    return 0.0 if denom == 0 else float(cov_ytyp / denom)


def _rank(x):
    x = np.asarray(x, float)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):  # average ranks over ties, like scipy.stats.rankdata
        m = x == v
        ranks[m] = ranks[m].mean()
    return ranks


def pearson(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.corrcoef(a, b)[0, 1])


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Glue(evaluate.Metric):
    def _info(self):
        if self.config_name not in _CONFIGS:
            raise KeyError("You should supply a configuration name selected in " + str(_CONFIGS))
        dtype = "float32" if self.config_name == "stsb" else "int64"
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value(dtype),
                                        "references": datasets.Value(dtype)}),
            codebase_urls=[],
            reference_urls=[],
            format="numpy",
        )

    def _compute(self, predictions, references):
        if self.config_name == "cola":
            return {"matthews_correlation": matthews_corrcoef(predictions, references)}
        if self.config_name == "stsb":
            return {"pearson": pearson(predictions, references),
                    "spearmanr": pearson(_rank(predictions), _rank(references))}
        if self.config_name in ("mrpc", "qqp"):
            return {"accuracy": simple_accuracy(predictions, references),
                    "f1": f1_binary(predictions, references)}
        return {"accuracy": simple_accuracy(predictions, references)}
