"""LLaMA-Factory's own records as hpcft's: each line of ``trainer_log.jsonl`` (its LogCallback,
rank 0) becomes a ``train`` event of ``progress.jsonl`` while the job runs, and ``all_results.json``
with the log the ``train`` entry of ``metrics.json`` that ``hpcft show`` and ``compare`` read;
:func:`model_fields` says what its ``output_dir`` holds as a native LLM run says it (the ``task``,
``base_model`` and ``adapter`` that ``hpcft export``, ``eval`` and ``serve`` read)."""

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
    loss = results.get("train_loss", last.get("loss"))
    logged = {r["step"]: r["loss"] for r in steps if isinstance(r.get("loss"), (int, float))}
    if any(r.get("event") == "resume" for r in records) and logged:
        # the Trainer's train_loss after a resume sums only the last leg's losses but divides by every
        # step (about half the real figure here): the mean of the logged losses, each step once
        loss = sum(logged.values()) / len(logged)
    out = {"runtime_s": round(runtime_s, 3), "global_step": last.get("step"), "epochs": results.get("epoch",
                                                                                                  last.get("epoch")),
           "loss": loss,
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


# LLaMA-Factory's stages as the tasks of hpcft's native LLM runs (metrics.json's ``task``). ``rm``
# trains a value head that scores answers (no causal LM: export, eval and serve refuse it, by this
# name); ``ppo``'s output_dir holds its policy (value_head.safetensors beside it), a causal LM.
REWARD_MODEL = "reward-model"
_PREF_LOSSES = {"orpo": "orpo", "simpo": "simpo"}   # stage: dpo's pref_loss; the others are DPO's


def model_fields(args: dict, base_model: str, output_dir: Path) -> dict:
    """``task``, ``base_model`` and ``adapter`` of a delegated run: a PEFT adapter in output_dir
    (finetuning_type lora, on the 4-bit base with quantization_bit: the run's method says qlora)
    goes on the staged base model; full and freeze runs saved the whole model there."""
    stage = str(args.get("stage") or "sft")
    task = {"rm": REWARD_MODEL, "kto": "kto", "dpo": _PREF_LOSSES.get(str(args.get("pref_loss")), "dpo")}.get(
        stage, "causal-lm")
    return {"task": task, "base_model": base_model, "adapter": (Path(output_dir) / "adapter_config.json").is_file()}
