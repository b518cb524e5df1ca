"""What the ranks of a multi-rank job do together, outside the Trainer: wait for each other and
agree on stopping. One process (no torch.distributed) does neither; torch is imported only
when there are several ranks."""

from __future__ import annotations

from typing import Any


def _dist_world() -> int:
    try:
        import torch.distributed as dist

        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    except (ImportError, RuntimeError):
        return 1


def agree_on_stop(local: bool, device: Any = None) -> bool:
    """All ranks take the stop-at-signal decision together: the max of every rank's flag.

    USR2 reaches each rank at a slightly different step; a rank that stopped alone would
    leave the others waiting in the next collective (a checkpoint save or an all-reduce)
    until the time limit kills the job without a checkpoint. Cost: one 4-byte all-reduce per
    optimizer step, and on GPUs/NPUs one host-device sync per step."""
    if _dist_world() <= 1:
        return local
    import torch
    import torch.distributed as dist

    flag = torch.tensor([1 if local else 0], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def barrier() -> None:
    if _dist_world() > 1:
        import torch.distributed as dist

        dist.barrier()
