"""Fault injection for worker tests: see ``sitecustomize.py`` in this folder."""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).resolve().parent


def fault_env(*, step_sleep: float = 0.0, fail_rank: str = "", cpu_fallback: bool = False) -> dict[str, str]:
    """Variables for a job's ``env.vars`` (or a worker subprocess) that inject the named faults."""
    items = []
    if step_sleep:
        items.append(f"step_sleep={step_sleep}")
    if fail_rank:
        items.append(f"fail_rank={fail_rank}")
    if cpu_fallback:
        items.append("cpu_fallback=1")
    return {"PYTHONPATH": str(FOLDER), "HPCFT_TEST_FAULTS": ",".join(items)}
