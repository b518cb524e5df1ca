"""A finished run's memory against what the pre-flight estimated for it.

``submit`` writes the estimate of an LLM job into its run folder (``memory-estimate.json``, the
shape ``hpcft check --json`` prints under ``estimate``); the worker records each rank's peaks in
``metrics.json`` (``memory``, ``ranks``). :func:`memory_vs_estimate` puts the two side by side,
for ``hpcft show`` and for a site's own accuracy table (``benchmarks/bench_memory.py --runs``):
the estimate is a bound at ``max_seq_length``, so a run whose data is shorter measures less.
Pure reading; nothing here imports torch.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Optional

from ..core.rundir import RunPaths

MiB_PER_GiB = 1024.0


def read_estimate(run_dir: Path | str) -> Optional[dict]:
    """The run's ``memory-estimate.json``, or None (not an LLM job, no estimate, or unreadable:
    a run folder is shared ground, so anything but a JSON object is ignored)."""
    try:
        data = json.loads(RunPaths(run_dir).memory_estimate.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("available") else None


def _num(v) -> Optional[float]:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 else None


def _node_host_mb(ranks: list) -> Optional[float]:
    """The largest sum of the ranks' peak host RSS on one node."""
    per_node: dict[str, float] = defaultdict(float)
    for r in ranks:
        if isinstance(r, dict) and _num(r.get("host_rss_mb")) is not None:
            per_node[str(r.get("host", "?"))] += float(r["host_rss_mb"])
    return max(per_node.values()) if per_node else None


def memory_vs_estimate(estimate: Optional[dict], metrics: Optional[dict]) -> Optional[dict]:
    """GiB estimated and measured, per device and per node, and the ratios measured/estimated
    (device: the allocator's reserved peak, which is what runs out). None without an estimate."""
    if not estimate:
        return None
    est_dev, est_node = _num(estimate.get("device_gib")), _num(estimate.get("node_gib"))
    mem = (metrics or {}).get("memory") if isinstance(metrics, dict) else None
    mem = mem if isinstance(mem, dict) else {}
    ranks = (metrics or {}).get("ranks") if isinstance(metrics, dict) else None
    alloc, reserved = _num(mem.get("peak_device_allocated_mb")), _num(mem.get("peak_device_reserved_mb"))
    node_mb = _node_host_mb(ranks if isinstance(ranks, list) else [])
    plan = estimate.get("plan") if isinstance(estimate.get("plan"), dict) else {}

    def gib(mb: Optional[float]) -> Optional[float]:
        return round(mb / MiB_PER_GiB, 2) if mb is not None else None

    def ratio(measured: Optional[float], est: Optional[float]) -> Optional[float]:
        return round(measured / est, 3) if measured is not None and est else None

    out = {"estimate_device_gib": est_dev, "estimate_node_gib": est_node,
           "peak_device_allocated_gib": gib(alloc), "peak_device_reserved_gib": gib(reserved),
           "peak_node_host_gib": gib(node_mb), "seq_len": plan.get("seq_len"), "partition": estimate.get("partition")}
    out["device_ratio"] = ratio(out["peak_device_reserved_gib"] or out["peak_device_allocated_gib"], est_dev)
    out["node_ratio"] = ratio(out["peak_node_host_gib"], est_node)
    return out


def describe(m: dict) -> list[str]:
    """``hpcft show``'s lines for :func:`memory_vs_estimate`'s result."""
    def num(v) -> str:
        return "-" if v is None else f"{v:g}"

    seq = f" at max_seq_length {m['seq_len']}" if m.get("seq_len") else ""
    lines = []
    if m.get("peak_device_reserved_gib") is not None or m.get("peak_device_allocated_gib") is not None:
        lines.append(f"device {num(m['peak_device_reserved_gib'])} GiB reserved at peak "
                     f"({num(m['peak_device_allocated_gib'])} allocated) against ~{num(m['estimate_device_gib'])} "
                     f"estimated{seq}: {num(m['device_ratio'])}x")
    else:
        lines.append(f"device: ~{num(m['estimate_device_gib'])} GiB estimated{seq} (no device peak recorded)")
    if m.get("peak_node_host_gib") is not None:
        lines.append(f"host {num(m['peak_node_host_gib'])} GiB per node at peak against ~"
                     f"{num(m['estimate_node_gib'])} estimated: {num(m['node_ratio'])}x")
    return lines


def dataset_key(dataset) -> object:
    """``train.dataset`` as JSON: a name, or the mix's entries as plain dicts."""
    if isinstance(dataset, list):
        return [d.model_dump() if hasattr(d, "model_dump") else d for d in dataset]
    return dataset


def plan_key(plan: dict) -> str:
    """A plan (``asdict(Plan)``) as one comparable string."""
    return json.dumps(plan, sort_keys=True, default=str)


def measured_peaks(runs_root: Path, model: str, dataset, *, scan: int = 500) -> dict[str, dict]:
    """What finished runs of this model and data measured, per plan (:func:`plan_key`), among
    the newest ``scan`` runs of the index: ``{"run_id", "gib", "allocated_gib", "partition",
    "runs"}``. ``gib`` is the largest device peak (reserved, else allocated) and names its run;
    ``allocated_gib`` the largest allocated peak, with its run and partition (None when no run
    recorded one). Read once per
    job, so placement can look up each candidate plan without reading the runs again."""
    from .index import RunStore

    found: dict[str, dict] = {}
    want = dataset_key(dataset)
    for entry in reversed(RunStore(runs_root).entries()[-scan:]):
        run_dir = entry.get("run_dir") if isinstance(entry, dict) else None
        if not isinstance(run_dir, str):
            continue
        est = read_estimate(run_dir)
        if not est or est.get("model") != model or est.get("dataset") != want \
                or not isinstance(est.get("plan"), dict):
            continue
        try:
            metrics = json.loads(RunPaths(run_dir).metrics.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        m = memory_vs_estimate(est, metrics) or {}
        gib = m.get("peak_device_reserved_gib") or m.get("peak_device_allocated_gib")
        if gib is None:
            continue
        key = plan_key(est["plan"])
        best = found.setdefault(key, {"run_id": None, "gib": 0.0, "partition": None, "allocated_gib": None,
                                      "allocated_run_id": None, "allocated_partition": None, "runs": 0})
        best["runs"] += 1
        if best["run_id"] is None or gib > best["gib"]:
            best.update(run_id=Path(run_dir).name, gib=gib, partition=est.get("partition"))
        alloc = m.get("peak_device_allocated_gib")
        if alloc is not None and (best["allocated_gib"] is None or alloc > best["allocated_gib"]):
            best.update(allocated_gib=alloc, allocated_run_id=Path(run_dir).name,
                        allocated_partition=est.get("partition"))
    return found


def earlier_peak(runs_root: Path, model: str, dataset, plan: dict, *, scan: int = 500) -> Optional[dict]:
    """The largest device peak (reserved, else allocated) that finished runs of the same model,
    data and plan measured (:func:`measured_peaks`): ``{"run_id", "gib", "runs", ...}``, or None.
    What a site measured is the estimate's best check: a job the arithmetic would refuse is let
    through when the same job already ran within the device's memory."""
    return measured_peaks(runs_root, model, dataset, scan=scan).get(plan_key(plan))
