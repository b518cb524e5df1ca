"""``train.streaming: true``: what a streamed corpus allows (pure; the job schema calls :func:`check`).

A stream is read once, in order, and never held in memory: so it has no length (the run needs
``max_steps``), nothing to cache or to tokenize ahead (``data_cache``, ``preprocess: cpu-job``),
one corpus (not a weighted mix, which samples from the whole of each dataset), and no held-out
slice (evaluation needs a split of its own, so a streamed run trains only). It reads
``data_format: text`` corpora: continued pre-training, where corpora outgrow host memory. The
worker's side is :mod:`hpcft.worker.data.stream`.
"""

from __future__ import annotations

from typing import Any


def problems(t: Any) -> list[str]:
    """Each reason ``t`` (a TrainSpec with ``streaming: true``) cannot stream, one line each."""
    if not t.streaming:
        return []
    out = []
    if t.task != "causal-lm":
        out.append(f"streaming: only for task: causal-lm (this job's task is {t.task})")
        return out
    if t.data_format != "text":
        out.append("streaming: reads data_format: text corpora (continued pre-training); set data_format: text, "
                   "or leave streaming out for instruction data")
    if not t.max_steps:
        out.append("streaming: a stream has no length to count epochs in; set train.max_steps")
    if t.data_cache:
        out.append("streaming: data_cache: true caches a tokenized copy of the whole corpus, which streaming "
                   "never builds; leave data_cache out")
    if t.preprocess == "cpu-job":
        out.append("streaming: preprocess: cpu-job tokenizes the whole corpus ahead; a stream tokenizes as it "
                   "trains: leave one of them out")
    if isinstance(t.dataset, list) and len(t.dataset) > 1:
        out.append("streaming: one corpus at a time (a weighted mix samples from the whole of each dataset)")
    if t.eval_split and t.eval_split != "none":
        out.append("streaming: a streamed run trains only; leave eval_split out and score it afterwards "
                   "(hpcft eval)")
    return out


def check(t: Any) -> None:
    found = problems(t)
    if found:
        raise ValueError("; ".join(found))
