"""What hpcft knows about vLLM without importing it (the login side may check a job against it).

vLLM sizes its LoRA slots by ``--max-lora-rank`` and accepts only a fixed set of values for it
(``vllm/config/lora.py``: ``MaxLoRARanks``, the same set from 0.6 to 0.32). An adapter of rank r
is served with the smallest allowed value >= r; an adapter above the largest cannot be served by
vLLM at all (hpcft refuses it before anything is queued, or serves it with transformers).
"""

from __future__ import annotations

from typing import Optional

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def lora_slot(rank: int) -> Optional[int]:
    """The ``--max-lora-rank`` that fits an adapter of ``rank``: the smallest allowed value at least
    ``rank`` (12 -> 16, 24 -> 32), or None above 512."""
    for allowed in LORA_RANKS:
        if rank <= allowed:
            return allowed
    return None


def lora_problem(rank: int, where: str = "the adapter") -> Optional[str]:
    """A one-line reason vLLM cannot serve an adapter of ``rank``, or None."""
    if lora_slot(rank) is None:
        return (f"{where} has LoRA rank {rank}; vLLM serves ranks up to {LORA_RANKS[-1]} "
                f"(--max-lora-rank takes {', '.join(map(str, LORA_RANKS))}): merge it first "
                f"(hpcft export RUN --merge) or serve it with --backend transformers")
    return None
