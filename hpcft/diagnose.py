"""Known failures, recognised in a job's log, with what to do about them.

Users meet these hours after submitting; a one-line hint saves them the search.
The table is data: (regex, hint). The first match in the log tail wins.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Optional

KNOWN: list[tuple[str, str]] = [
    (r"cannot import name 'AdamW' from 'transformers'",
     "transformers 5 removed AdamW: use `from torch.optim import AdamW` in your script"),
    (r"CUDA out of memory|torch\.OutOfMemoryError|NPU out of memory",
     "out of device memory: lower train.batch_size and raise train.gradient_accumulation (same effective "
     "batch), lower train.max_seq_length, or set train.precision: bf16"),
    (r"OfflineModeIsEnabled|Couldn't reach '([^']+)' on the Hub|We couldn't connect to 'https?://",
     "a library tried the network on the compute node: stage the asset on the login node "
     "(hpcft stage NAME) and load it by the same name"),
    (r"Couldn't find a module script at|Couldn't find a module script",
     "evaluate metric not cached: stage it on the login node, e.g. hpcft stage --metric glue"),
    (r"ModuleNotFoundError: No module named 'tbe'|No module named 'te'|set_env\.sh",
     "CANN environment missing: set cann_set_env in the cluster config to your set_env.sh"),
    (r"No module named 'torch_npu'",
     "torch_npu is not installed in the job's environment: install hpcft[npu] (see envs/npu.yml)"),
    (r"NCCL.*(?:timeout|Timeout|timed out)|Watchdog caught collective operation timeout",
     "NCCL collective timed out: one rank died or hung; check every rank's log (hpcft logs RUN --rank N)"),
    (r"HCCL.*(?:timeout|time out)|hccl.*error",
     "HCCL failed: stale NPU processes from an earlier job can block HCCL (npu-smi info); raise "
     "HCCL_CONNECT_TIMEOUT in the cluster config's hccl_env"),
    (r"Address already in use",
     "port clash: another job on this node uses MASTER_PORT; hpcft derives it from the job id, so "
     "check that your script does not hard-code a port"),
    (r"module: command not found",
     "environment modules are not available on this node: remove env.modules or ask the admins"),
    (r"No space left on device|ENOSPC",
     "disk full: free space in the output folder or point output_dir at a larger filesystem"),
    (r"slurmstepd: error: .*(?:DUE TO TIME LIMIT|CANCELLED .* DUE TO TIME LIMIT)",
     "time limit reached: raise resources.time (hpcft requeues train jobs from their last checkpoint)"),
    (r"oom-kill|Out Of Memory|OOM Killed",
     "host memory exhausted: raise resources.mem or lower the batch size / dataloader workers"),
]
_COMPILED = [(re.compile(p), h) for p, h in KNOWN]


def diagnose_lines(lines: Iterable[str]) -> Optional[str]:
    lines = list(lines)
    for pattern, hint in _COMPILED:
        for line in reversed(lines):
            if pattern.search(line):
                return hint
    return None


def diagnose_files(paths: Iterable[Path], tail_bytes: int = 256 * 1024) -> Optional[str]:
    lines: list[str] = []
    for path in paths:
        try:
            with open(path, "rb") as fh:
                fh.seek(0, 2)
                fh.seek(max(0, fh.tell() - tail_bytes))
                lines += fh.read().decode("utf-8", "replace").splitlines()
        except OSError:
            continue
    return diagnose_lines(lines)
