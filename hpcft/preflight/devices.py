"""The memory of one GPU/NPU from what sites write: the cluster config's ``device_memory``,
the gres types Slurm's autodetect produces (NVML names such as ``nvidia_a100-sxm4-80gb`` or
``h100_80gb_hbm3``, Ascend's ``910b3``), and node features that name a device. When a partition
mixes types, the smallest wins. A name that does not tell the size (``a100``: 40 or 80 GB,
``910b``: 32 or 64 GB) is not guessed."""

from __future__ import annotations

import re
from typing import Optional

# GiB of the usable memory of a device whose name alone tells it
KNOWN_DEVICES = {
    "h100": 80, "h100_nvl": 94, "h100-nvl": 94, "h800": 80, "h200": 141, "h20": 96, "h100-pcie": 80,
    "gh200": 96, "b200": 180, "l40s": 48, "l40": 48, "l20": 48, "l4": 24, "a6000": 48, "rtx_a6000": 48,
    "a40": 48, "a30": 24, "a10": 24, "a10g": 24, "t4": 16, "4090": 24, "rtx_4090": 24, "geforce_rtx_4090": 24,
    "3090": 24, "rtx_3090": 24, "geforce_rtx_3090": 24, "v100s": 32, "mi300x": 192, "mi250x": 128,
    "910b1": 64, "910b2": 64, "910b2c": 64, "910b3": 64, "910b4": 32, "910a": 32, "910proa": 32, "910": 32,
}
# names that are ambiguous on their own (the size is in the full NVML name, or the site must say)
AMBIGUOUS = {"a100", "a800", "v100", "910b", "a100-pcie", "a100-sxm4", "v100-sxm2", "v100-pcie"}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE)
_IN_NAME = re.compile(r"(?:^|[-_])([0-9]{2,3})g(?:b|ib)?(?=$|[-_])", re.IGNORECASE)
_PREFIX = re.compile(r"^(?:nvidia|tesla|ascend|huawei|amd)[-_ ]?", re.IGNORECASE)
_DEVICE_WORDS = ("gpu", "npu", "hbm", "vram")


def parse_size_gib(text: str) -> float:
    """'80G', '64GB', '80GiB', '81920M', '80' (GiB) -> GiB; ValueError for anything else."""
    m = _SIZE.match(str(text))
    if not m:
        raise ValueError(f"{text!r}: expected a size such as 80G, 64GB or 81920M")
    value, unit = float(m.group(1)), (m.group(2) or "G").upper()
    gib = value * {"K": 2 ** -20, "M": 2 ** -10, "G": 1, "T": 1024}[unit]
    if gib <= 0:
        raise ValueError(f"{text!r}: a device has more than 0 memory")
    return gib


def from_name(name: str) -> Optional[float]:
    """GiB of a device from its gres type or feature name; None when the name does not tell."""
    low = _PREFIX.sub("", name.strip().lower())
    m = _IN_NAME.search(low)
    if m and any(w in low for w in ("a100", "a800", "h100", "h800", "v100", "h200", "h20", "gpu", "910")):
        return float(m.group(1))
    if low in AMBIGUOUS:
        return None
    if low in KNOWN_DEVICES:
        return float(KNOWN_DEVICES[low])
    base = re.split(r"[-_](?:sxm\d?|pcie|hbm\d?e?)", low)[0]   # h100_sxm5 -> h100
    if base not in AMBIGUOUS and base in KNOWN_DEVICES:
        return float(KNOWN_DEVICES[base])
    return None


def _feature(feature: str) -> Optional[float]:
    """A node feature that states the device memory (``gpumem80g``, ``gpu-80gb``, ``hbm64g``) or
    names a device; host-memory features (``mem256g``, ``bigmem-1024gb``) say nothing."""
    low = feature.lower()
    if any(w in low for w in _DEVICE_WORDS):
        m = re.search(r"([0-9]+)g(?:b|ib)?$", low)
        if m:
            return float(m.group(1))
    return from_name(feature)


def device_memory(table: dict, partition: Optional[str], gres_types: list[str], features: list[str]
                  ) -> tuple[Optional[float], str]:
    """(GiB, where it came from). The cluster config's ``device_memory`` by partition wins; then
    each gres type (configured, else from its name) and, without gres types, node features; of
    several types the smallest. (None, "") when nothing tells."""
    low = {str(k).lower(): v for k, v in (table or {}).items()}
    if partition and partition.lower() in low:
        return parse_size_gib(low[partition.lower()]), f"device_memory[{partition}] (partition)"
    found: list[tuple[float, str]] = []
    for g in gres_types:
        if g.lower() in low:
            found.append((parse_size_gib(low[g.lower()]), f"device_memory[{g}] (gres type)"))
        elif (gib := from_name(g)) is not None:
            found.append((gib, f"gres type {g}"))
        else:
            return None, ""   # one type of the mix unknown: the smallest cannot be told
    if not found:
        for f in features:
            if f.lower() in low:
                found.append((parse_size_gib(low[f.lower()]), f"device_memory[{f}] (node feature)"))
            elif (gib := _feature(f)) is not None:
                found.append((gib, f"node feature {f}"))
    if not found:
        return None, ""
    gib, source = min(found, key=lambda x: x[0])
    if len({round(g) for g, _ in found}) > 1:
        source += f", the smallest of {len(found)} device types"
    return gib, source
