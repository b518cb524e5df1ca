"""The benchmarks as ModelScope hosts them: loading scripts over archives, for the loopback hub.

The same questions as :mod:`devtools.hub.eval_fixtures` (the HF layout), laid out as ModelScope's
own repos are (hpcft/stage/eval_convert.py names the loading scripts the layouts were read from):

* ``modelscope/mmlu``: ``mmlu.py`` + ``data.tar`` with ``data/{dev,val,test}/<subject>_<folder>.csv``,
  no header, question, A-D, answer letter;
* ``modelscope/cmmlu``: ``cmmlu.py`` + ``cmmlu_v1_0_1.zip`` with ``{dev,test}/<subject>.csv``, header
  ``,Question,A,B,C,D,Answer`` (the first column a row index);
* ``modelscope/ceval-exam``: ``ceval_exam.py`` + ``ceval-exam.zip`` with
  ``{dev,val,test}/<subject>_<folder>.csv``, header ``id,question,A,B,C,D,answer,explanation``
  (test without answer and explanation). The real script fetches the zip from an OSS bucket; here
  the repo holds it (``with_data=False`` gives the script alone);
* ``modelscope/gsm8k``: ``gsm8k.py`` + ``train.jsonl``/``test.jsonl`` (likewise off the hub upstream).

The scripts here are one-line stand-ins: hpcft never runs them. Converted by ``hpcft stage --eval
... --source modelscope``, every repo gives exactly the rows the HF fixtures hold.
"""

from __future__ import annotations

import csv
import io
import json
import tarfile
import zipfile
from pathlib import Path

from .eval_fixtures import LETTERS, gsm_rows, mc_rows

MS_MMLU, MS_CMMLU, MS_CEVAL, MS_GSM8K = "modelscope/mmlu", "modelscope/cmmlu", "modelscope/ceval-exam", "modelscope/gsm8k"
SCRIPT = "# a stand-in for ModelScope's loading script ({}); hpcft reads the data files and never runs it\n"


def csv_bytes(rows: list[list]) -> bytes:
    buf = io.StringIO(newline="")
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue().encode()


def write_tar(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    """A tar of ``members`` (name -> bytes), plus symbolic ``links`` (name -> target)."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1704067200, 0o644
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mtime = tarfile.SYMTYPE, target, 1704067200
            tf.addfile(info)
    return path


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name, (2024, 1, 1, 0, 0, 0)), data, compress_type=zipfile.ZIP_DEFLATED)
    return path


def _mc(subject: str, split: str, k: int) -> list[tuple[str, list[str], str]]:
    return [(q["question"], q["choices"], LETTERS[q["answer"]]) for q in mc_rows(subject, split, k)]


def mmlu_members(subjects, n: int = 8) -> dict[str, bytes]:
    out = {}
    for s in subjects:
        for folder, split, k in (("dev", "dev", 5), ("val", "validation", n), ("test", "test", n)):
            out[f"data/{folder}/{s}_{folder}.csv"] = csv_bytes([[q, *c, a] for q, c, a in _mc(s, split, k)])
    return out


def cmmlu_members(subjects, n: int = 8) -> dict[str, bytes]:
    out = {}
    for s in subjects:
        for split, k in (("dev", 5), ("test", n)):
            rows = [["", "Question", "A", "B", "C", "D", "Answer"]]
            rows += [[i, q, *c, a] for i, (q, c, a) in enumerate(_mc(s, split, k))]
            out[f"{split}/{s}.csv"] = csv_bytes(rows)
    return out


def ceval_members(subjects, n: int = 8) -> dict[str, bytes]:
    out = {}
    for s in subjects:
        for split, k in (("dev", 5), ("val", n), ("test", n)):
            if split == "test":  # the real test split has no answers
                rows = [["id", "question", "A", "B", "C", "D"]] + [[i, q, *c] for i, (q, c, _) in
                                                                   enumerate(_mc(s, split, k))]
            else:
                rows = [["id", "question", "A", "B", "C", "D", "answer", "explanation"]]
                rows += [[i, q, *c, a, ""] for i, (q, c, a) in enumerate(_mc(s, split, k))]
            out[f"{split}/{s}_{split}.csv"] = csv_bytes(rows)
    return out


def gsm8k_files(n: int = 8) -> dict[str, bytes]:
    return {f"{split}.jsonl": "".join(json.dumps(r) + "\n" for r in gsm_rows(split, k)).encode()
            for split, k in (("train", 16), ("test", n))}


def _repo(folder: Path, script: str, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / script).write_text(SCRIPT.format(script))
    (folder / "README.md").write_text(f"# {folder.name} (hpcft's stand-in of ModelScope's copy)\n")
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def make_ms_mmlu(folder, subjects, n: int = 8, members: dict | None = None, links: dict | None = None) -> Path:
    folder = _repo(Path(folder), "mmlu.py", {})
    write_tar(folder / "data.tar", mmlu_members(subjects, n) if members is None else members, links)
    return folder


def make_ms_cmmlu(folder, subjects, n: int = 8, members: dict | None = None) -> Path:
    folder = _repo(Path(folder), "cmmlu.py", {})
    write_zip(folder / "cmmlu_v1_0_1.zip", cmmlu_members(subjects, n) if members is None else members)
    return folder


def make_ms_ceval(folder, subjects, n: int = 8, with_data: bool = True) -> Path:
    folder = _repo(Path(folder), "ceval_exam.py", {})
    if with_data:
        write_zip(folder / "ceval-exam.zip", ceval_members(subjects, n))
    return folder


def make_ms_gsm8k(folder, n: int = 8) -> Path:
    return _repo(Path(folder), "gsm8k.py", gsm8k_files(n))


def make_ms_eval_fixtures(root, subjects: dict, n: int = 8) -> dict[str, Path]:
    """Every benchmark's ModelScope repo under ``root`` (``subjects``: {"mmlu": [...], ...})."""
    root = Path(root)
    return {MS_MMLU: make_ms_mmlu(root / "ms-mmlu", subjects["mmlu"], n),
            MS_CMMLU: make_ms_cmmlu(root / "ms-cmmlu", subjects["cmmlu"], n),
            MS_CEVAL: make_ms_ceval(root / "ms-ceval", subjects["ceval"], n),
            MS_GSM8K: make_ms_gsm8k(root / "ms-gsm8k", n)}
