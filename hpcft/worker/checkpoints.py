"""Trainer checkpoints that survive requeues, crashes and full disks.

The Trainer writes ``checkpoint-<step>/`` in place. hpcft adds a marker file once a
checkpoint is complete; resume only ever picks a marked one, and a half-written
folder (killed mid-write, disk full) is removed, so the previous checkpoint stays the
one to resume from. The format is the Trainer's own (DeepSpeed's engine state lands
in the same folder), so multi-rank jobs can reuse this module.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Optional

from hpcft.worker.errors import CheckpointWriteError

MARKER = "hpcft-complete.json"
_CKPT = re.compile(r"^checkpoint-(\d+)$")


def _step(path: Path) -> int:
    m = _CKPT.match(path.name)
    return int(m.group(1)) if m else -1


def checkpoints(root: Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and _CKPT.match(p.name)), key=_step)


def is_complete(path: Path) -> bool:
    return (Path(path) / MARKER).is_file()


def latest_complete(root: Path) -> Optional[Path]:
    done = [p for p in checkpoints(root) if is_complete(p)]
    return done[-1] if done else None


def remove_incomplete(root: Path) -> list[Path]:
    """Delete checkpoint folders without the marker (a write that never finished)."""
    removed = []
    for p in checkpoints(root):
        if not is_complete(p):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def mark_complete(path: Path, info: dict) -> None:
    path = Path(path)
    tmp = path / f".{MARKER}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump({**info, "time": time.time()}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path / MARKER)


def describe_failure(exc: OSError, folder: Path, root: Path) -> CheckpointWriteError:
    """Remove the partial folder and explain, naming the checkpoint that is still good."""
    shutil.rmtree(folder, ignore_errors=True)
    good = latest_complete(root)
    keep = f"the previous checkpoint {good.name} is intact and will be resumed from" if good else \
        "no earlier checkpoint exists"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            free = shutil.disk_usage(root).free / 2**20
            where = f" ({free:.0f} MiB free on {root})"
        except OSError:
            where = ""
        msg = (f"disk full while writing {folder.name}{where}: {keep}. Free space or raise your quota, "
               "then resubmit; set train.checkpoint_steps less often or use a larger filesystem for runs_dir")
    else:
        msg = f"writing {folder.name} failed ({exc.strerror or exc}): {keep}"
    return CheckpointWriteError(exc.errno or errno.EIO, msg)
