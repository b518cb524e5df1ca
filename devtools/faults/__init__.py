"""Fault injection for worker tests: see ``sitecustomize.py`` in this folder."""

from __future__ import annotations

import os
from pathlib import Path

FOLDER = Path(__file__).resolve().parent
PAUSED = "test-fault-paused"   # written into the run folder by the pause_at fault


def fault_env(*, step_sleep: float = 0.0, fail_rank: str = "", cpu_fallback: bool = False,
              pause_at: int = 0, tokenize_sleep: float = 0.0) -> dict[str, str]:
    """Variables for a job's ``env.vars`` (or a worker subprocess) that inject the named faults."""
    items = []
    if step_sleep:
        items.append(f"step_sleep={step_sleep}")
    if pause_at:
        items.append(f"pause_at={pause_at}")
    if tokenize_sleep:
        items.append(f"tokenize_sleep={tokenize_sleep}")
    if fail_rank:
        items.append(f"fail_rank={fail_rank}")
    extra = {}
    if cpu_fallback:
        items.append("cpu_fallback=1")
        # multi-rank CPU runs compile DeepSpeed's CPU comm op on first use (1-4 min on a busy
        # machine); the test session shares one build folder (tests/conftest.py) so it is paid once
        if os.environ.get("HPCFT_TEST_OPS_DIR"):
            extra["TORCH_EXTENSIONS_DIR"] = os.environ["HPCFT_TEST_OPS_DIR"]
    return {"PYTHONPATH": str(FOLDER), "HPCFT_TEST_FAULTS": ",".join(items), **extra}


def wait_paused(run_dir, *, timeout: float, what: str, describe=None) -> None:
    """Wait until a run started with ``fault_env(pause_at=N)`` is paused at step N: from then on it
    waits for the time-limit signal, so a test that signals now cannot be too late."""
    from devtools.wait import wait_for

    marker = Path(run_dir) / PAUSED
    wait_for(marker.exists, timeout=timeout, interval=0.1, what=what, describe=describe)
