"""The causal-lm data pre-flight rule: before anything is queued, the first rows of each local
``.jsonl``/``.json`` data file of ``train.dataset`` (every dataset of a mix) are rows the worker
can train on (:mod:`hpcft.core.sft_rows`), each problem one line naming the file and row. Hub
datasets are checked by the worker, row by row, with the model's chat template."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from ..core.sft_rows import sample_problems
from .checks import Check, Preflight

NAME = "data rows"


def sft_data(p: Preflight) -> Iterator[Check]:
    seen: set[Path] = set()
    problems: list[str] = []
    for job in p.jobs:
        t = job.train
        if t is None or t.task != "causal-lm":
            continue
        for e in t.dataset_entries:
            path = Path(e.name).expanduser()
            path = path if path.is_absolute() else p.base_dir / path
            if path in seen or not path.is_file():
                continue  # a hub dataset, or a missing file (the assets rule names it)
            seen.add(path)
            problems += sample_problems(path, e.data_format or t.data_format)
    for problem in problems:  # one line each
        yield Check(NAME, False, problem)
    if seen and not problems:
        yield Check(NAME, True, f"{len(seen)} data file(s) sampled")
