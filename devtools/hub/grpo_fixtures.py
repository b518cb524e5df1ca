"""Arithmetic data for GRPO tests and benchmarks: small sums whose answers a tiny chat model can
learn (:func:`hpcft.core.rewards.answer_numeric` scores them), as SFT rows (alpaca) and as GRPO
rows (``{prompt, answer}``, the answer GSM8K-style after ``####``).
"""

from __future__ import annotations

import json
import random
from pathlib import Path


def sums(n: int, seed: int = 0, top: int = 2) -> list[tuple[str, int]]:
    r = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = r.randint(0, top), r.randint(0, top)
        out.append((f"What is {a} plus {b}?", a + b))
    return out


def write_sft(path, n: int = 48, seed: int = 0, right: float = 0.5) -> Path:
    """Alpaca rows answering ``N``, right for a share ``right`` of them (the others a
    neighbouring number): the SFT model learns the form and is often wrong, so GRPO has
    something to learn."""
    r = random.Random(seed + 1)
    path = Path(path)
    lines = []
    for q, s in sums(n, seed):
        given = s if r.random() < right else max(0, s + r.choice((-1, 1)))
        lines.append(json.dumps({"instruction": q, "input": "", "output": str(given)}))
    path.write_text("\n".join(lines) + "\n")
    return path


def write_grpo(path, n: int = 32, seed: int = 5, messages: bool = False) -> Path:
    path = Path(path)
    rows = []
    for q, s in sums(n, seed):
        prompt = [{"role": "user", "content": q}] if messages else q
        rows.append({"prompt": prompt, "answer": f"{q} #### {s}"})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path
