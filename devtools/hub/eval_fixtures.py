"""Benchmark datasets in the layout lm-evaluation-harness loads them from the hub, small and learnable.

The real repos, as the harness's task files name them (``dataset_path``/``dataset_name``/splits):

* ``ceval/ceval-exam``: one config per subject, folder ``<subject>/`` with ``dev``/``val``/``test``
  parquet; columns ``id, question, A, B, C, D, answer, explanation``;
* ``haonan-li/cmmlu``: one config per subject, ``dev``/``test``; ``Question, A, B, C, D, Answer``;
* ``cais/mmlu``: one config per subject, ``dev``/``validation``/``test``; ``question, subject,
  choices`` (4 strings), ``answer`` (class label A-D);
* ``openai/gsm8k``: configs ``main`` and ``socratic``, ``train``/``test``; ``question, answer``
  (worked solution ending ``#### N``).

Learnable on purpose: every multiple-choice answer is the same letter and every GSM8K answer the
same number, so a model fine-tuned on :func:`training_texts` (other questions, same prompt format)
scores higher than the base model. The words come from the tiny LLM fixture's tokenizer corpus.
"""

from __future__ import annotations

import random
from pathlib import Path

from .llm_fixtures import COLORS, THINGS

CEVAL_ID, CMMLU_ID, MMLU_ID, GSM8K_ID = "ceval/ceval-exam", "haonan-li/cmmlu", "cais/mmlu", "openai/gsm8k"
LETTERS = "ABCD"
ANSWER = "B"          # every multiple-choice answer
GSM_ANSWER = 7        # every GSM8K answer


def _question(r: random.Random, i: int) -> tuple[str, list[str]]:
    word = THINGS[i % len(THINGS)]
    opts = r.sample(COLORS, 4)
    return f"What color is the {word} number {i}?", opts


def mc_rows(subject: str, split: str, n: int) -> list[dict]:
    """``n`` questions: (question, four options, the answer's index) -- always :data:`ANSWER`."""
    r = random.Random(f"{subject}/{split}")
    out = []
    for i in range(n):
        q, opts = _question(r, i + (1000 if split in ("dev", "train") else 0))
        out.append({"question": q, "choices": opts, "answer": LETTERS.index(ANSWER)})
    return out


def gsm_rows(split: str, n: int) -> list[dict]:
    r = random.Random(f"gsm8k/{split}")
    out = []
    for i in range(n):
        a, b = r.randint(1, 6), r.randint(1, 6)
        word = THINGS[i % len(THINGS)]
        out.append({"question": f"The {word} has {a} red and {b} blue. How many are there?",
                    "answer": f"There are {GSM_ANSWER}.\n#### {GSM_ANSWER}"})
    return out


def _write(path: Path, rows: list[dict], schema) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, compression="snappy")
    return path.stat().st_size


def _card(out: Path, title: str, configs: dict[str, dict[str, int]], features: list) -> None:
    """README with the hub's YAML ``configs:`` (data files per split) and ``dataset_info``."""
    import yaml

    meta = {"dataset_info": [{"config_name": c, "features": features} for c in configs],
            "configs": [{"config_name": c, "data_files": [{"split": s, "path": f"{c}/{s}-*"} for s in splits]}
                        for c, splits in configs.items()]}
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    (out / "README.md").write_text(f"---\n{front}---\n\n# {title} (hpcft's synthetic, learnable stand-in)\n",
                                   encoding="utf-8")
    (out / ".gitattributes").write_text("*.parquet filter=lfs diff=lfs merge=lfs -text\n")


def make_ceval(dir, subjects, n: int = 8) -> Path:
    import pyarrow as pa

    out = Path(dir)
    schema = pa.schema([("id", pa.int32()), ("question", pa.string()), ("A", pa.string()), ("B", pa.string()),
                        ("C", pa.string()), ("D", pa.string()), ("answer", pa.string()), ("explanation", pa.string())])
    configs = {}
    for s in subjects:
        configs[s] = {}
        for split, k in (("dev", 5), ("val", n), ("test", n)):
            rows = [{"id": i, "question": q["question"], **dict(zip(LETTERS, q["choices"])),
                     "answer": "" if split == "test" else LETTERS[q["answer"]],  # the real test split hides them
                     "explanation": ""} for i, q in enumerate(mc_rows(s, split, k))]
            _write(out / s / f"{split}-00000-of-00001.parquet", rows, schema)
            configs[s][split] = k
    feats = [{"name": f.name, "dtype": "int32" if f.name == "id" else "string"} for f in schema]
    _card(out, "C-Eval", configs, feats)
    return out


def make_cmmlu(dir, subjects, n: int = 8) -> Path:
    import pyarrow as pa

    out = Path(dir)
    schema = pa.schema([(c, pa.string()) for c in ("Question", "A", "B", "C", "D", "Answer")])
    configs = {}
    for s in subjects:
        configs[s] = {}
        for split, k in (("dev", 5), ("test", n)):
            rows = [{"Question": q["question"], **dict(zip(LETTERS, q["choices"])), "Answer": LETTERS[q["answer"]]}
                    for q in mc_rows(s, split, k)]
            _write(out / s / f"{split}-00000-of-00001.parquet", rows, schema)
            configs[s][split] = k
    _card(out, "CMMLU", configs, [{"name": f.name, "dtype": "string"} for f in schema])
    return out


def make_mmlu(dir, subjects, n: int = 8) -> Path:
    import pyarrow as pa

    out = Path(dir)
    schema = pa.schema([("question", pa.string()), ("subject", pa.string()), ("choices", pa.list_(pa.string())),
                        ("answer", pa.int64())])
    configs = {}
    for s in subjects:
        configs[s] = {}
        for split, k in (("dev", 5), ("validation", n), ("test", n)):
            rows = [{**q, "subject": s} for q in mc_rows(s, split, k)]
            _write(out / s / f"{split}-00000-of-00001.parquet", rows, schema)
            configs[s][split] = k
    feats = [{"name": "question", "dtype": "string"}, {"name": "subject", "dtype": "string"},
             {"name": "choices", "sequence": "string"},
             {"name": "answer", "dtype": {"class_label": {"names": {str(i): x for i, x in enumerate(LETTERS)}}}}]
    _card(out, "MMLU", configs, feats)
    return out


def make_gsm8k(dir, n: int = 8) -> Path:
    import pyarrow as pa

    out = Path(dir)
    schema = pa.schema([("question", pa.string()), ("answer", pa.string())])
    configs = {}
    for cfg in ("main", "socratic"):
        configs[cfg] = {}
        for split, k in (("train", 16), ("test", n)):
            _write(out / cfg / f"{split}-00000-of-00001.parquet", gsm_rows(split, k), schema)
            configs[cfg][split] = k
    _card(out, "GSM8K", configs, [{"name": f.name, "dtype": "string"} for f in schema])
    return out


def make_eval_fixtures(root, subjects: dict | None = None, n: int = 8) -> dict[str, Path]:
    """Every benchmark's repo under ``root``; ``subjects`` limits a benchmark's configs
    (``{"mmlu": ["anatomy"]}``), default every subject the harness knows."""
    from hpcft.core.eval_tasks import BENCHMARKS

    root, subjects = Path(root), subjects or {}
    pick = {k: subjects.get(k, BENCHMARKS[k].subjects) for k in ("ceval", "cmmlu", "mmlu")}
    return {CEVAL_ID: make_ceval(root / "ceval", pick["ceval"], n), CMMLU_ID: make_cmmlu(root / "cmmlu", pick["cmmlu"], n),
            MMLU_ID: make_mmlu(root / "mmlu", pick["mmlu"], n), GSM8K_ID: make_gsm8k(root / "gsm8k", n)}


def training_texts(n: int = 64) -> list[str]:
    """Plain-text training rows in the harness's prompt formats, with the fixtures' fixed answers
    (questions other than the evaluated ones)."""
    rows = []
    for i, q in enumerate(mc_rows("train", "train", n)):
        a, b, c, d = q["choices"]
        body = f"{q['question']}\nA. {a}\nB. {b}\nC. {c}\nD. {d}\n"
        rows.append(body + (f"答案： {ANSWER}" if i % 2 else f"Answer: {ANSWER}"))
    rows += [f"Question: {g['question']}\nAnswer: {g['answer']}" for g in gsm_rows("train-ft", n // 2)]
    return rows
