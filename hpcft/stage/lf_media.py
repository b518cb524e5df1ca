"""The image, video and audio files a LLaMA-Factory dataset's rows reference (login side, light).

LLaMA-Factory (0.9.5, ``data/converter.py`` ``_find_medias``) reads a row's ``images``/``videos``/
``audios`` column (``columns:`` of its ``dataset_info.json`` entry) as paths, each joined to
``media_dir`` (default: ``dataset_dir``) when the dataset is loaded from a local file or folder
(``file_name``, ``script_url``): an existing file there is used, anything else as written. A
compute node is offline and sees only what is staged, so ``hpcft stage --job``:

* for a hub dataset (``hf_hub_url``/``ms_hub_url``/``om_hub_url``) reads its rows once its data
  files are fetched and fetches the media they name into the same staged folder, and only those
  (a row naming a folder brings the folder); the paths are the repo's own. On the node the
  dataset is that folder (``script_url``) and ``media_dir`` points at it;
* for a local dataset (``file_name``) checks, before anything is staged, that every media file
  it names is a file under its ``media_dir``; the node reads them in place (``media_dir`` made
  absolute in the resolved YAML).

Refused, one line each (``dataset NAME: row N: image PATH: ...``): a missing file, a URL (the
node cannot fetch it), an absolute path outside the dataset, a ``..`` escape, a symlink leaving
the folder, more than :data:`MAX_PER_ROW` media in a row or :data:`MAX_MEDIA` in a dataset.
Embedded media (parquet ``Image`` cells carrying their bytes) need nothing staged.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, Optional

from ..core.errors import ConfigError

MEDIA_KINDS = ("images", "videos", "audios")
WORD = {"images": "image", "videos": "video", "audios": "audio"}
MAX_PER_ROW = 256          # media one row may name
MAX_MEDIA = 100_000        # distinct media files one dataset may name
MAX_LINES = 20             # problems printed (then a count of the rest)
ROW_SUFFIXES = (".json", ".jsonl", ".parquet")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:(//|[^\\/])")   # http://, s3://, data:..., not C:\ or c:/
_HUB_SOURCES = ("hf_hub_url", "ms_hub_url", "om_hub_url")


@dataclass(frozen=True)
class MediaRequest:
    """A hub dataset's media to fetch with it: the LLaMA-Factory name and ``{kind: column}``."""

    dataset: str
    columns: tuple[tuple[str, str], ...]

    @property
    def key(self) -> list[str]:   # what the staged manifest records (``lf_media``)
        return [f"{kind}:{col}" for kind, col in self.columns]


@dataclass
class MediaPlan:
    """What ``stage --job`` does for the media of an LLaMA-Factory job's datasets."""

    hub: dict[str, MediaRequest] = field(default_factory=dict)   # staged dataset name -> its request
    local: dict[str, int] = field(default_factory=dict)          # LF name -> media files checked in place


def media_columns(entry: dict) -> tuple[tuple[str, str], ...]:
    cols = entry.get("columns") if isinstance(entry.get("columns"), dict) else {}
    return tuple((k, str(cols[k])) for k in MEDIA_KINDS if cols.get(k))


# --------------------------------------------------------------------------- rows

def _rows_of(name: str, fh: IO[bytes], suffix: str) -> Iterator[dict]:
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ConfigError([f"dataset {name}: {name} is parquet, and reading its media column needs pyarrow "
                               "in hpcft's own environment (pip install pyarrow)"]) from None
        for batch in pq.ParquetFile(fh).iter_batches(batch_size=1024):
            yield from batch.to_pylist()
        return
    text = fh.read().decode("utf-8", "replace")
    if suffix == ".jsonl" or not text.lstrip().startswith("["):
        for line in text.splitlines():
            if line.strip():
                row = json.loads(line)
                yield row if isinstance(row, dict) else {}
        return
    data = json.loads(text)
    for row in data if isinstance(data, list) else []:
        yield row if isinstance(row, dict) else {}


def _values(value: Any) -> Iterator[Any]:
    if isinstance(value, list):   # a list of media, or of video frames (a list of lists)
        for v in value:
            yield from (v if isinstance(v, list) else [v])
    elif value is not None:
        yield value


def references(name: str, files: Iterable[tuple[str, Callable[[], IO[bytes]]]],
               columns: tuple[tuple[str, str], ...], problems: list[str]) -> dict[str, tuple[int, str]]:
    """``{path as written: (row, kind)}`` of every media path the rows of ``files`` name (row is
    1-based across the files, in order); paths that can never be staged go to ``problems``."""
    out: dict[str, tuple[int, str]] = {}
    row_no = 0
    for fname, opener in files:
        suffix = Path(fname).suffix.lower()
        try:
            with opener() as fh:
                for row in _rows_of(name, fh, suffix):
                    row_no += 1
                    for kind, col in columns:
                        vals = list(_values(row.get(col)))
                        if len(vals) > MAX_PER_ROW:
                            problems.append(f"dataset {name}: row {row_no}: {len(vals)} {kind} in one row; hpcft "
                                            f"stages at most {MAX_PER_ROW} per row")
                            continue
                        for v in vals:
                            if isinstance(v, dict) and v.get("bytes"):
                                continue   # embedded in the data file: nothing to stage
                            path = v.get("path") if isinstance(v, dict) else v
                            if not isinstance(path, str) or not path:
                                problems.append(f"dataset {name}: row {row_no}: {WORD[kind]} {str(v)[:80]!r}: "
                                                "not a path")
                                continue
                            if path not in out:
                                out[path] = (row_no, kind)
                    if len(out) > MAX_MEDIA:
                        raise ConfigError([f"dataset {name}: its rows name more than {MAX_MEDIA} media files; "
                                           f"hpcft stages at most that many per dataset (split it into several "
                                           "datasets, or embed the media in parquet Image cells)"])
        except (ValueError, UnicodeError) as exc:
            problems.append(f"dataset {name}: {fname}: cannot read its rows ({str(exc)[:120]})")
    return out


def _syntax(path: str) -> tuple[Optional[str], str]:
    """(why ``path`` can never be staged or None, its normalized relative form)."""
    if "\0" in path or "\n" in path:
        return "not a path (a NUL or newline in it)", path
    if _URL.match(path):
        return ("a URL; compute nodes are offline, so LLaMA-Factory cannot fetch it there: download it "
                "beside the dataset, name it by a path relative to media_dir, and stage again"), path
    if path.startswith("/"):
        return "", posixpath.normpath(path)   # "": absolute; the caller decides
    rel = posixpath.normpath(path.replace("\\", "/"))
    if rel == ".." or rel.startswith("../"):
        return "'..' leads outside", rel
    return None, rel


def _line(name: str, where: tuple[int, str], path: str, why: str) -> str:
    row, kind = where
    return f"dataset {name}: row {row}: {WORD[kind]} {path}: {why}"


def _raise(problems: list[str]) -> None:
    if problems:
        rest = len(problems) - MAX_LINES
        raise ConfigError(problems[:MAX_LINES] + ([f"… and {rest} more like these"] if rest > 0 else []))


# --------------------------------------------------------------------------- local datasets: checked in place

def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _data_files(where: Path) -> list[Path]:
    if where.is_dir():   # LLaMA-Factory reads every file of a file_name folder
        return sorted(p for p in where.iterdir() if p.is_file() and p.suffix.lower() in ROW_SUFFIXES)
    return [where] if where.is_file() and where.suffix.lower() in ROW_SUFFIXES else []


def check_local(name: str, entry: dict, media_dir: Path, problems: list[str]) -> int:
    """Every media file a local dataset's rows name is a file under ``media_dir``; the count."""
    columns = media_columns(entry)
    where = Path(str(entry.get("file_name") or entry.get("script_url")))
    files = _data_files(where)
    if not files:
        if where.exists():
            problems.append(f"dataset {name}: {where}: hpcft reads media columns from {', '.join(ROW_SUFFIXES)} rows")
        return 0   # a missing data file is the dataset check's line
    found = references(name, [(str(f), lambda f=f: open(f, "rb")) for f in files], columns, problems)
    root = os.path.realpath(media_dir)
    n = 0
    for path, at in found.items():
        why, rel = _syntax(path)
        if why:
            problems.append(_line(name, at, path, f"{why} {media_dir}" if why.startswith("'..'") else why))
            continue
        full = rel if why == "" else os.path.join(media_dir, rel)
        if why == "" and not _inside(os.path.normpath(full), os.path.normpath(str(media_dir))):
            problems.append(_line(name, at, path, f"an absolute path outside the dataset's media_dir {media_dir}; "
                                                  "name it relative to media_dir (and put it there)"))
            continue
        if not os.path.lexists(full):
            problems.append(_line(name, at, path, "not found"))
            continue
        real = os.path.realpath(full)
        if not _inside(real, root):
            problems.append(_line(name, at, path, f"a symlink leading outside the dataset's media_dir {media_dir} "
                                                  f"(to {real}); copy the file there"))
            continue
        if os.path.isdir(real):
            bad = [p for p in Path(real).rglob("*") if not _inside(os.path.realpath(p), root)]
            if bad:
                problems.append(_line(name, at, path, f"{bad[0]} is a symlink leading outside the dataset's "
                                                      f"media_dir {media_dir}; copy the file there"))
                continue
        elif not os.path.isfile(real):
            problems.append(_line(name, at, path, "not a regular file"))
            continue
        n += 1
    return n


# --------------------------------------------------------------------------- hub datasets: fetched with them

def hub_media(req: MediaRequest, label: str, listed: Iterable[str], data_files: list[str],
              opener: Callable[[str], IO[bytes]]) -> set[str]:
    """The repo files the rows of ``data_files`` (already fetched; ``opener`` reads one) name: each
    path exactly as listed, or every file under a listed folder. Raises ConfigError otherwise."""
    problems: list[str] = []
    found = references(req.dataset, [(p, lambda p=p: opener(p)) for p in data_files if
                                     Path(p).suffix.lower() in ROW_SUFFIXES], req.columns, problems)
    listed = sorted(listed)
    files = set(listed)
    want: set[str] = set()
    for path, at in found.items():
        why, rel = _syntax(path)
        if why is not None:
            why = why or "an absolute path; a hub dataset's media are paths inside its repo"
            problems.append(_line(req.dataset, at, path, f"{why} {label}" if why.startswith("'..'") else why))
            continue
        if rel in files:
            want.add(rel)
            continue
        under = [p for p in listed if p.startswith(rel.rstrip("/") + "/")]
        if under:
            want.update(under)
        else:
            problems.append(_line(req.dataset, at, path, f"not found in {label}"))
    if len(want) > MAX_MEDIA:
        problems.append(f"dataset {req.dataset}: its rows name {len(want)} media files in {label}; hpcft stages "
                        f"at most {MAX_MEDIA} per dataset")
    _raise(problems)
    return want


# --------------------------------------------------------------------------- the plan for stage --job

def plan(spec: dict, base_dir: Path) -> MediaPlan:
    """The media plan of a delegated job's ``train.llamafactory`` (``spec``). Local datasets are
    checked here, before anything is staged; ConfigError lists every problem."""
    args = spec.get("args") or {}
    dataset_dir = Path(str(args.get("dataset_dir") or base_dir / "data"))
    media = Path(str(args["media_dir"])).expanduser() if args.get("media_dir") else dataset_dir
    media_dir = media if media.is_absolute() else base_dir / media
    out, problems = MediaPlan(), []
    roots: dict[str, str] = {}   # LF name -> where its media are (one media_dir serves them all)
    for name, entry in (spec.get("dataset_info") or {}).items():
        columns = media_columns(entry)
        if not columns:
            continue
        if any(entry.get(k) for k in _HUB_SOURCES):
            staged = str(spec.get("datasets", {}).get(name) or entry.get("hf_hub_url"))
            out.hub[staged] = MediaRequest(name, columns)
            roots[name] = f"the staged folder of {staged}"
        else:
            out.local[name] = check_local(name, entry, media_dir, problems)
            roots[name] = str(media_dir)
    if len(set(roots.values())) > 1:
        first, *others = roots
        for name in others:
            if roots[name] != roots[first]:
                problems.append(f"dataset {name}: its media are in {roots[name]}, dataset {first}'s in "
                                f"{roots[first]}; LLaMA-Factory reads every dataset's media from one media_dir "
                                "(train them as separate jobs, or put the media in one folder)")
    _raise(problems)
    return out
