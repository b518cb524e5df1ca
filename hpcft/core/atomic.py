"""Atomic, concurrency-safe writes for run folders and the shared cache.

Every file hpcft writes that another process may read is written to a
temporary file in the same directory and renamed into place, so readers see
either the old or the new content, never a torn one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


def atomic_write_bytes(path: str | os.PathLike, data: bytes, mode: int = 0o644, durable: bool = True) -> Path:
    """``durable=False`` skips the fsync: still atomic for readers (rename), for files in a
    folder nobody reads yet and that a crash may lose (a sweep's task folders before sbatch)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
            os.fchmod(fh.fileno(), mode)  # on the descriptor: a name swapped meanwhile changes nothing
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str, mode: int = 0o644, durable: bool = True) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), mode, durable)


def atomic_write_json(path: str | os.PathLike, obj: Any, mode: int = 0o644, durable: bool = True) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", mode, durable)


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return default


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, timeout: float = 600) -> Iterator[None]:
    """An inter-process lock (flock-based, works across users on a shared FS that supports it)."""
    from filelock import FileLock  # small, but only paid by commands that write

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path), timeout=timeout, mode=0o664):
        yield
