"""What the built-in trainer knows about well-known datasets (light: no torch).

A preset fills in what a job leaves out: text columns, label column, number of
labels, the eval split, the GLUE metric config and the headline metric. A job's
own fields always win.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass(frozen=True)
class Preset:
    text_columns: tuple[str, ...]
    num_labels: int
    label_column: str = "label"
    eval_split: Optional[str] = "validation"
    headline: str = "accuracy"
    metrics: tuple[str, ...] = ("accuracy",)   # built-in metrics when the job stages none
    glue_config: Optional[str] = None           # evaluate.load("glue", <this>) for metric: glue
    regression: bool = False
    notes: dict = field(default_factory=dict)


def _glue(cols, n=2, headline="accuracy", metrics=("accuracy",), eval_split="validation", **kw) -> Preset:
    return Preset(tuple(cols), n, eval_split=eval_split, headline=headline, metrics=metrics, **kw)


GLUE: dict[str, Preset] = {
    "cola": _glue(["sentence"], headline="matthews_correlation", metrics=("matthews_correlation",)),
    "sst2": _glue(["sentence"]),
    "mrpc": _glue(["sentence1", "sentence2"], metrics=("accuracy", "f1")),
    "qqp": _glue(["question1", "question2"], metrics=("accuracy", "f1")),
    "stsb": _glue(["sentence1", "sentence2"], n=1, headline="pearson", metrics=("pearson", "spearmanr"),
                  regression=True),
    "mnli": _glue(["premise", "hypothesis"], n=3, eval_split="validation_matched"),
    "qnli": _glue(["question", "sentence"]),
    "rte": _glue(["sentence1", "sentence2"]),
    "wnli": _glue(["sentence1", "sentence2"]),
}
for _name, _p in list(GLUE.items()):
    object.__setattr__(_p, "glue_config", _name)

# Other datasets tutorials use, by the last part of their repo id.
OTHERS: dict[str, Preset] = {
    "yelp_review_full": Preset(("text",), 5, eval_split="test"),
    "imdb": Preset(("text",), 2, eval_split="test"),
    "ag_news": Preset(("text",), 4, eval_split="test"),
    "emotion": Preset(("text",), 6),
    "rotten_tomatoes": Preset(("text",), 2),
}

GLUE_NAMES = {"glue", "nyu-mll/glue", "ai_connect/glue"}  # the last: GLUE on Modelers (openMind tutorial)


def preset_for(dataset: str, config: Optional[str]) -> Optional[Preset]:
    """The preset of ``glue`` + ``mrpc`` (any spelling), ``yelp_review_full``, ...; None if unknown."""
    name = dataset.strip().lower()
    if name in GLUE_NAMES and config:
        return GLUE.get(config.lower())
    return OTHERS.get(name.rsplit("/", 1)[-1])
