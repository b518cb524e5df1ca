"""The causal-lm data pre-flight rule: before anything is queued, the first rows of each local
``.jsonl``/``.json`` data file of ``train.dataset`` (every dataset of a mix) are rows the worker
can train on (:mod:`hpcft.core.sft_rows`), and, when the model is staged with a chat template,
the first rows and every sampled row with tools or tool calls render on that template as the
worker renders them (:class:`hpcft.core.chat.TemplateTokenizer`, jinja2 only). Each problem is
one line naming the file and row. Hub datasets are checked by the worker, row by row. And
``packing: true`` on a model that runs its own code is refused (its attention would let the
packed examples see each other)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

from ..core.job import Job
from ..core.sft_rows import sample_problems, template_problems
from .checks import Check, Preflight

NAME = "data rows"


def sft_data(p: Preflight) -> Iterator[Check]:
    seen: set[Path] = set()
    problems: list[str] = []
    for job in p.jobs:
        t = job.train
        if t is None or t.task != "causal-lm":
            continue
        template = None
        for e in t.dataset_entries:
            path = Path(e.name).expanduser()
            path = path if path.is_absolute() else p.base_dir / path
            if path in seen or not path.is_file():
                continue  # a hub dataset, or a missing file (the assets rule names it)
            seen.add(path)
            fmt = e.data_format or t.data_format
            problems += sample_problems(path, fmt)
            template = template or _template(job, p)
            if template is not None:  # rows the basic check refused are skipped here
                problems += template_problems(path, template, fmt, system=t.system_prompt,
                                              enable_thinking=t.enable_thinking, train_on=t.train_on or "all")
        if t.packing and t.trust_remote_code:
            for problem in _packing(job, p):
                yield Check("packing", False, problem)
    for problem in problems:  # one line each
        yield Check(NAME, False, problem)
    if seen and not problems:
        yield Check(NAME, True, f"{len(seen)} data file(s) sampled")


def _model_dir(job: Job, p: Preflight) -> Optional[Path]:
    """The staged (or local) model folder, or None (not staged yet: the assets rule says so)."""
    from ..core.assets import lookup
    from ..core.resolve import load_table
    from ..core.store import Cache

    model = lookup("model", job.train.model, Cache(p.settings.cache), load_table(p.settings), base_dir=p.base_dir)
    return Path(model.path) if model.path is not None and Path(model.path).is_dir() else None


def _template(job: Job, p: Preflight) -> Optional[object]:
    """The model's chat template, read without transformers, or None."""
    from ..core.chat import TemplateTokenizer

    folder = _model_dir(job, p)
    return TemplateTokenizer.from_folder(folder) if folder else None


def _packing(job: Job, p: Preflight) -> list[str]:
    """Packing keeps examples apart only in transformers' own attention code; a model whose
    config maps AutoModelForCausalLM to its repository's code (run with trust_remote_code)
    would let packed examples attend to each other."""
    import json

    folder = _model_dir(job, p)
    try:
        auto = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("auto_map") or {} if folder else {}
    except (OSError, ValueError):
        return []
    code = auto.get("AutoModelForCausalLM") if isinstance(auto, dict) else None
    if not code:
        return []
    return [f"packing: true with the model's own code ({code}, trust_remote_code): its attention does not keep "
            "packed examples apart as transformers' does; set packing: false"]
