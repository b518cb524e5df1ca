"""LLaMA-Factory's own records as hpcft's: each line of ``trainer_log.jsonl`` (its LogCallback,
rank 0) becomes a ``train`` event of ``progress.jsonl`` while the job runs, and ``all_results.json``
with the log the ``train`` entry of ``metrics.json`` that ``hpcft show`` and ``compare`` read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from hpcft.core.atomic import read_json

TRAINER_LOG = "trainer_log.jsonl"
ALL_RESULTS = "all_results.json"


def train_event(rec: dict) -> Optional[dict]:
    """One trainer_log.jsonl record as a ``train`` event's fields (None for its eval lines)."""
    step = rec.get("current_steps")
    if not isinstance(step, int) or not isinstance(rec.get("loss"), (int, float)):
        return None
    out: dict[str, Any] = {"step": step, "max_steps": rec.get("total_steps"), "epoch": rec.get("epoch"),
                           "loss": float(rec["loss"]), "learning_rate": rec.get("lr"),
                           "eta": rec.get("remaining_time")}
    if isinstance(rec.get("throughput"), (int, float)):
        out["tokens_per_s"] = rec["throughput"]
    return {k: v for k, v in out.items() if v is not None}


class LogTail:
    """The new whole lines of ``trainer_log.jsonl`` since the last read (from ``offset``)."""

    def __init__(self, path: Path, offset: Optional[int] = None):
        self.path = Path(path)
        self.offset = offset if offset is not None else (self.path.stat().st_size if self.path.is_file() else 0)

    def read(self) -> list[dict]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1   # a line still being written waits for the next read
        self.offset += end
        out = []
        for line in data[:end].splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
        return out


def train_metrics(output_dir: Path, records: list[dict], *, runtime_s: float) -> dict:
    """metrics.json's ``train``: LLaMA-Factory's all_results.json (its ``train_*`` figures) and the
    last logged step (from the progress events, every leg's)."""
    results = read_json(output_dir / ALL_RESULTS)
    results = results if isinstance(results, dict) else {}
    steps = [r for r in records if r.get("event") == "train" and isinstance(r.get("step"), int)]
    last = max(steps, key=lambda r: r["step"]) if steps else {}
    out = {"runtime_s": round(runtime_s, 3), "global_step": last.get("step"), "epochs": results.get("epoch",
                                                                                                  last.get("epoch")),
           "loss": results.get("train_loss", last.get("loss")),
           "samples_per_second": results.get("train_samples_per_second"), "trainer": results}
    if isinstance(results.get("effective_tokens_per_sec"), (int, float)):
        out["tokens_per_second"] = results["effective_tokens_per_sec"]
    return out


def eval_metrics(output_dir: Path) -> dict:
    """The ``eval_*`` figures of all_results.json, without the prefix (LLaMA-Factory evaluates
    when its YAML sets ``val_size``/``eval_dataset``)."""
    results = read_json(output_dir / ALL_RESULTS)
    if not isinstance(results, dict):
        return {}
    return {k[5:]: v for k, v in results.items() if k.startswith("eval_") and isinstance(v, (int, float))}
