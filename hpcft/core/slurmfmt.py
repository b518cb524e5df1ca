"""Slurm's text formats, parsed by pure functions: host lists and per-node device indexes.

Shared by both sides: the login side reads ``scontrol``/``sinfo`` output (:mod:`hpcft.cluster.slurm`),
the compute side reads its own allocation (:mod:`hpcft.worker.taskenv`). No commands run here.
"""

from __future__ import annotations

import re
from typing import Optional


def expand_hostlist(text: str) -> list[str]:
    """``node[1-3,5],gpu01`` -> ['node1', 'node2', 'node3', 'node5', 'gpu01']."""
    hosts: list[str] = []
    for m in re.finditer(r"([^,\[]+)(?:\[([^\]]+)\])?([^,]*)", text or ""):
        prefix, ranges, suffix = m.group(1), m.group(2), m.group(3)
        if not prefix and not ranges:
            continue
        if not ranges:
            hosts.append(prefix + suffix)
            continue
        for part in ranges.split(","):
            if "-" in part:
                lo, hi = part.split("-", 1)
                width = len(lo)
                hosts += [f"{prefix}{i:0{width}d}{suffix}" for i in range(int(lo), int(hi) + 1)]
            else:
                hosts.append(prefix + part + suffix)
    return hosts


def expand_idx(text: str) -> list[int]:
    """``0-1,3`` -> [0, 1, 3] (Slurm's IDX lists)."""
    out: list[int] = []
    for part in text.split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def node_gres_idx(scontrol_text: str, node: Optional[str] = None, kind: str = "npu") -> Optional[list[int]]:
    """Device indexes of ``kind`` from ``scontrol show job -d`` output, whose per-node lines read
    ``Nodes=node[1-2] CPU_IDs=0-1 Mem=0 GRES=npu:2(IDX:0-1)`` (one line per group of nodes).
    With ``node``, only that node's line counts; without, the first line that has the device."""
    for m in re.finditer(r"\bNodes=(\S+)\s.*?GRES=(\S+)", scontrol_text):
        if node is not None and node not in expand_hostlist(m.group(1)):
            continue
        g = re.search(rf"{kind}[^,(]*\(IDX:([0-9,-]+)\)", m.group(2))
        if g:
            return expand_idx(g.group(1))
    return None
