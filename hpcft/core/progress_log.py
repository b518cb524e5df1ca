"""The one reader of ``progress.jsonl`` (and the other JSON-lines files of a run folder), for both sides.

The worker appends one JSON object per line while the login side reads the file, so a reader may
meet a last line still being written, a torn line left by a killed writer (which the requeued job's
first line then follows on the same line), or a line of something else (a stray print). Every whole
JSON object is returned, in file order, and the rest skipped; a missing file reads as no lines.
Stdlib only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Optional

TAIL_BYTES = 4096  # what last_progress reads first; it reads further back only for a longer line


def _object(line: str) -> Optional[dict[str, Any]]:
    """The JSON object a line holds; for a line that a killed writer tore and the next writer
    (the requeued job) appended to, the whole object at its end. None for anything else."""
    start = 0
    while start >= 0:
        try:
            obj = json.loads(line[start:])
        except json.JSONDecodeError:
            start = line.find("{", start + 1)
            continue
        return obj if isinstance(obj, dict) else None
    return None


def _objects(lines: Iterable[str]) -> Iterable[dict[str, Any]]:
    for line in lines:
        obj = _object(line)
        if obj is not None:
            yield obj


def read_jsonl(path: Path | str, limit: Optional[int] = None) -> list[dict[str, Any]]:
    """Every whole JSON object line of ``path`` (the first ``limit`` of them when given)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    out = []
    for obj in _objects(text.splitlines()):
        out.append(obj)
        if limit is not None and len(out) >= limit:
            break
    return out


def read_progress(path: Path | str) -> list[dict[str, Any]]:
    """Every event of a run's ``progress.jsonl``, oldest first."""
    return read_jsonl(path)


def last_progress(path: Path | str) -> Optional[dict[str, Any]]:
    """The last whole event of ``progress.jsonl`` (None when there is none), reading only the
    file's tail: a long training run's file is never read in full for one line."""
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return None
    with fh:
        size = fh.seek(0, os.SEEK_END)
        window = TAIL_BYTES
        while True:
            start = max(0, size - window)
            fh.seek(start)
            lines = fh.read(size - start).decode("utf-8", "replace").splitlines()
            if start > 0:
                lines = lines[1:]  # the first line may begin mid-line
            last = next(_objects(reversed(lines)), None)
            if last is not None or start == 0:
                return last
            window *= 4
