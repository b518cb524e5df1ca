"""The tokenize-once cache's key, computed the same way on the login node and in the worker.

Nothing here imports transformers, datasets or torch: ``hpcft submit`` and ``hpcft preprocess``
compute the key of a job's data before anything is queued (a cache hit queues no preprocessing
job), and the worker (:mod:`hpcft.worker.data.cache`) computes it with this very function.

**The key** (:func:`cache_key` of :func:`ingredients`) hashes everything that changes the
tokens: each dataset's files (path, size, mtime of every file of the staged snapshot or the
local file) with its name, config, weight and format; the bytes of the tokenizer's files (they
hold its class, special tokens and chat template, and trust_remote_code tokenizers' ``*.py``);
the job's ``max_seq_length``, ``packing``, ``train_on``, ``text_last_block``, ``system_prompt``,
``enable_thinking``, ``data_format``, splits, subsets and seed; the versions of the libraries that
tokenize (read from their metadata, not imported); the bytes of hpcft's own data code; and
:data:`FORMAT`. Two Python environments with other library versions give other keys: a login
node whose environment is not the job's may predict a miss where the worker hits, never the
reverse.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional

FORMAT = 2        # 2: the key no longer reads the loaded tokenizer (its files say the same)
FOLDER = "data"   # under $HPCFT_RUNTIME
META = "meta.json"
# hpcft's modules whose code decides the tokens: an upgrade that changes them misses the cache
CODE = ("worker/data/cache.py", "worker/data/mix.py", "worker/data/staged.py", "worker/data/llm.py",
        "worker/data/packing.py", "core/chat.py", "core/sft_rows.py", "core/data_key.py")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "vocab.txt", "merges.txt", "tokenizer.model", "spiece.model", "config.json",
                   "chat_template.jinja", "chat_template.json", "generation_config.json")
JOB_FIELDS = ("max_seq_length", "packing", "train_on", "text_last_block", "system_prompt", "enable_thinking",
              "data_format", "train_split", "eval_split", "train_subset", "eval_subset", "seed", "trust_remote_code")
LIBRARIES = ("transformers", "tokenizers", "datasets", "pyarrow", "jinja2")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def data_files(path: Path) -> list:
    """[rel path, size, mtime_ns] of a dataset's file, or of every file of its folder (links
    followed to the staged blobs; ``.cache`` folders skipped)."""
    path = Path(path)
    if path.is_file():
        st = path.stat()
        return [[path.name, st.st_size, st.st_mtime_ns]]
    out = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d != ".cache")
        for name in sorted(files):
            p = Path(root) / name
            st = p.stat()
            out.append([str(p.relative_to(path)), st.st_size, st.st_mtime_ns])
    return out


def tokenizer_files(folder: Path) -> dict[str, str]:
    """sha256 of each tokenizer file of the model folder (and of its own ``*.py`` and
    ``*.tiktoken``, for trust_remote_code tokenizers)."""
    folder = Path(folder)
    names = [n for n in TOKENIZER_FILES if (folder / n).is_file()]
    names += sorted(p.name for p in folder.glob("*.py")) + sorted(p.name for p in folder.glob("*.tiktoken"))
    return {n: _sha((folder / n).read_bytes()) for n in names}


def code_hash() -> str:
    root = Path(__file__).resolve().parent.parent
    return _sha(b"".join((root / rel).read_bytes() for rel in CODE))


def versions() -> dict[str, str]:
    """The tokenizing libraries' versions, from their installed metadata (nothing is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in LIBRARIES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "-"
    return out


def ingredients(t, refs: list, model_path: Path) -> dict:
    """Everything the key hashes (see the module docstring): ``t`` a job's ``train:`` spec,
    ``refs`` its datasets' :class:`hpcft.core.assets.JobAsset` in order, ``model_path`` the
    staged model folder (its tokenizer files)."""
    return {
        "format": FORMAT,
        "datasets": [{"name": e.name, "weight": e.weight, "data_format": e.data_format, "config": ref.config,
                      **({"alpaca_join": e.alpaca_join} if e.alpaca_join is not None else {}),
                      "path": str(Path(ref.path).resolve()), "files": data_files(ref.path)}
                     for e, ref in zip(t.dataset_entries, refs, strict=True)],
        "tokenizer": {"files": tokenizer_files(model_path)},
        "job": {f: getattr(t, f, None) for f in JOB_FIELDS},
        "versions": versions(),
        "code": code_hash(),
    }


def cache_key(parts: dict) -> str:
    return _sha(json.dumps(parts, sort_keys=True, default=str).encode())[:24]


def runtime_cache_root(runtime: Optional[str | Path] = None) -> Path:
    """``$HPCFT_RUNTIME/data`` (the user's own run-time folder; not created here)."""
    from .offline import private_runtime

    runtime = runtime or os.environ.get("HPCFT_RUNTIME")
    return (Path(runtime) if runtime else private_runtime()) / FOLDER


def built_meta(folder: Path) -> Optional[dict]:
    """The meta.json of a complete cache folder (its files as meta.json lists them), else None.
    The worker still loads and checks the data itself; this is the login side's cheap look."""
    try:
        meta = json.loads((Path(folder) / META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return None
    return meta if file_sizes(Path(folder)) == meta.get("files") else None


def file_sizes(folder: Path) -> dict[str, int]:
    """{relative path: size} of a cache folder's files but meta.json (which lists them)."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != META}
