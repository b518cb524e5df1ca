"""The progress stream: ``progress.jsonl`` in the run folder, one JSON object per line, written
by rank 0 (``hpcft status`` reads the last line)::

    {"time", "event", "step", "max_steps", "epoch", "loss", "learning_rate", "eta", "eta_s", ...}

Events: ``start``/``resume``, ``first_step``, ``train``, ``eval``, ``checkpoint``, ``signal``,
``requeue``, ``leg``, ``requeue_handoff``, ``nan``, ``failed``, ``done``. What writes them: the
Trainer callback (:mod:`hpcft.worker.callback`), the time-limit hand-off
(:mod:`hpcft.worker.timelimit`), the run's lifecycle (:mod:`hpcft.worker.runtime`,
:mod:`hpcft.worker.task`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


class ProgressWriter:
    def __init__(self, path: Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled

    def write(self, event: str, **fields: Any) -> None:
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), "event": event, **fields}
        line = json.dumps(record, default=float, allow_nan=True) + "\n"
        with open(self.path, "a", encoding="utf-8") as fh:  # one write per line: readers see whole lines
            fh.write(line)
