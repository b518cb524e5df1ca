"""``hpcft compare``: the same fine-tune on different hardware, side by side (login side).

Reads run folders only (run.json, metrics.json, progress.jsonl, launch.json): no Slurm call,
no torch; matplotlib is imported only to draw the PNG. Runs from before the worker recorded
``hardware``/``throughput``/``memory``/``wall`` still show, from the older fields.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..core.atomic import read_json
from ..core.errors import ConfigError
from ..core.eval_tasks import read_scores
from ..core.progress_log import read_progress
from ..core.rundir import RunPaths
from .index import RunRecord, RunStore
from .ref import resolve_run

SKIP_EVAL = {"loss", "runtime", "samples_per_second", "steps_per_second", "epoch", "step"}


@dataclass
class RunRow:
    """One run, as the table, the JSON and the plot show it."""

    run_id: str
    name: str
    run_dir: str
    label: str = ""
    state: str = ""
    partition: Optional[str] = None
    device: Optional[str] = None          # cuda | npu | cpu
    device_name: Optional[str] = None
    device_count: Optional[int] = None
    precision: Optional[str] = None
    world_size: Optional[int] = None
    samples_per_s: Optional[float] = None
    tokens_per_s: Optional[float] = None
    samples_ratio: Optional[float] = None  # to the first run
    tokens_ratio: Optional[float] = None
    peak_memory_mb: Optional[float] = None
    peak_memory_kind: Optional[str] = None  # device | host
    train_s: Optional[float] = None
    queue_wait_s: Optional[float] = None
    device_hours: Optional[float] = None
    final_loss: Optional[float] = None
    headline: Optional[str] = None
    headline_value: Optional[float] = None
    reward_margin: Optional[float] = None    # preference runs: the final eval's chosen-rejected reward margin
    reward_accuracy: Optional[float] = None  # and how often the chosen reply scored higher
    benchmarks: dict[str, float] = field(default_factory=dict)   # hpcft eval: task -> score (eval/<task>.json)
    series: dict[str, Any] = field(default_factory=dict, repr=False)  # curves for the plot


# --------------------------------------------------------------------------- choosing runs

def select(store: RunStore, refs: list[str], last: Optional[int]) -> list[RunRecord]:
    records = [resolve_run(store, r) for r in refs]
    if last:
        records += store.records(limit=last)
    if not records:
        raise ConfigError(["hpcft compare: name the runs to compare (RUN RUN ...) or use --last N"])
    seen: set[str] = set()
    out = []
    for r in records:
        if r.run_id not in seen:
            seen.add(r.run_id)
            out.append(r)
    return out


# --------------------------------------------------------------------------- reading a run

def _num(v: Any) -> Optional[float]:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _series(records: list[dict], headline: Optional[str]) -> dict[str, Any]:
    """Loss against step and against wall time (seconds since training first started), and the
    headline eval metric against step; the last value wins for a step logged twice (a resume)."""
    by_step: dict[int, tuple[float, float]] = {}
    t0 = next((r["time"] for r in records if r.get("event") in ("start", "resume") and "time" in r), None)
    for r in records:
        if r.get("event") == "train" and _num(r.get("loss")) is not None and "step" in r:
            t0 = r["time"] if t0 is None else t0
            by_step[int(r["step"])] = (float(r["loss"]), float(r.get("time", t0)) - t0)
    steps = sorted(by_step)
    evals: dict[int, float] = {}
    for r in records:
        if r.get("event") == "eval" and headline and _num((r.get("metrics") or {}).get(headline)) is not None:
            evals[int(r["step"])] = float(r["metrics"][headline])
    return {"step": steps, "loss": [by_step[s][0] for s in steps],
            "wall_s": [round(by_step[s][1], 3) for s in steps],
            "eval_step": sorted(evals), "eval": [evals[s] for s in sorted(evals)], "eval_name": headline}


def read_row(record: RunRecord) -> RunRow:
    paths = RunPaths(record.run_dir)
    m = read_json(paths.metrics) or {}
    launch = read_json(paths.launch) or {}
    hw, thr, mem, wall = (m.get(k) or {} for k in ("hardware", "throughput", "memory", "wall"))
    train = m.get("train") or {}
    old_mem = m.get("peak_memory_mb") or {}
    row = RunRow(run_id=record.run_id, name=record.name, run_dir=record.run_dir, state=record.state,
                 partition=record.partition or (record.executor if record.executor == "local" else None))
    row.device = hw.get("device") or m.get("device") or launch.get("device")
    row.device_name = hw.get("device_name") or m.get("device_name")
    row.precision = hw.get("precision") or m.get("precision")
    world = launch.get("nodes", 1) * launch.get("tasks_per_node", 1) if launch else None
    row.world_size = hw.get("world_size") or world
    row.device_count = hw.get("device_count") or row.world_size
    row.samples_per_s = _num(thr.get("samples_per_s")) or _num(train.get("samples_per_second"))
    row.tokens_per_s = _num(thr.get("tokens_per_s"))
    device_mb = _num(mem.get("peak_device_allocated_mb")) or _num(old_mem.get("device_mb"))
    host_mb = _num(mem.get("peak_host_rss_mb")) or _num(old_mem.get("host_rss_mb"))
    row.peak_memory_mb, row.peak_memory_kind = (device_mb, "device") if device_mb else (host_mb, "host" if host_mb else None)
    row.train_s = _num(wall.get("train_s")) or _num(train.get("runtime_s"))
    row.queue_wait_s = _num(wall.get("queue_wait_s"))
    row.device_hours = _num(m.get("device_hours"))
    row.headline = m.get("headline")
    row.headline_value = _num((m.get("eval") or {}).get(row.headline)) if row.headline else None
    row.reward_margin = _num((m.get("eval") or {}).get("rewards/margins"))
    row.reward_accuracy = _num((m.get("eval") or {}).get("rewards/accuracies"))
    records = read_progress(paths.progress)
    if row.headline is None:  # still running or failed: name the metric its evaluations produced
        ev = next((r for r in reversed(records) if r.get("event") == "eval"), None)
        row.headline = next((k for k in (ev or {}).get("metrics", {}) if k not in SKIP_EVAL), None)
    row.series = _series(records, row.headline)
    row.final_loss = row.series["loss"][-1] if row.series["loss"] else _num(train.get("loss"))
    row.benchmarks = {k: float(v["score"]) for k, v in read_scores(record.run_dir).items() if _num(v.get("score")) is not None}
    return row


def compare(records: list[RunRecord]) -> list[RunRow]:
    rows = [read_row(r) for r in records]
    base = rows[0]
    for row in rows:
        row.samples_ratio = _ratio(row.samples_per_s, base.samples_per_s)
        row.tokens_ratio = _ratio(row.tokens_per_s, base.tokens_per_s)
    labels = [f"{r.name} [{r.partition or '-'}]" for r in rows]
    for row, label in zip(rows, labels):
        row.label = label if labels.count(label) == 1 else f"{label} {row.run_id[-4:]}"
    return rows


def _ratio(v: Optional[float], base: Optional[float]) -> Optional[float]:
    # Not rounded here: the table formats it once (.2f); rounding twice turned 1.1749 into 1.18.
    return v / base if v is not None and base else None


# --------------------------------------------------------------------------- output

HEADERS = ["run", "partition", "device", "precision", "world", "samples/s", "tokens/s", "peak mem",
           "train time", "queue", "final loss", "metric"]


def _f(v: Optional[float], fmt: str = "{:.4g}") -> str:
    return "-" if v is None else fmt.format(v)


def _rate(v: Optional[float], ratio: Optional[float]) -> str:
    return "-" if v is None else f"{v:.1f} ({ratio:.2f}x)" if ratio is not None else f"{v:.1f}"


def _secs(v: Optional[float]) -> str:
    if v is None:
        return "-"
    return f"{v:.1f} s" if v < 120 else f"{v / 60:.1f} min" if v < 7200 else f"{v / 3600:.2f} h"


def benchmark_columns(rows: list[RunRow]) -> list[str]:
    """One column per benchmark task any of the runs was scored on, in first-seen order."""
    return list(dict.fromkeys(k for r in rows for k in r.benchmarks))


def headers(rows: list[RunRow]) -> list[str]:
    return HEADERS + benchmark_columns(rows)


def table_rows(rows: list[RunRow]) -> list[list[str]]:
    out = []
    bench = benchmark_columns(rows)
    for r in rows:
        device = f"{r.device_name or r.device or '-'}"
        if r.device_count and r.device_count > 1:
            device = f"{r.device_count}x {device}"
        mem = "-" if r.peak_memory_mb is None else f"{r.peak_memory_mb:.0f} MiB" + (
            " (host)" if r.peak_memory_kind == "host" else "")
        metric = "-" if r.headline_value is None else f"{r.headline} {r.headline_value:.4f}"
        if r.reward_margin is not None and r.headline != "rewards/margins":
            metric += f", margin {r.reward_margin:.4f}"
        out.append([r.label, r.partition or "-", device, r.precision or "-", _f(r.world_size, "{}"),
                    _rate(r.samples_per_s, r.samples_ratio), _rate(r.tokens_per_s, r.tokens_ratio), mem,
                    _secs(r.train_s), _secs(r.queue_wait_s), _f(r.final_loss), metric,
                    *(_f(r.benchmarks.get(b), "{:.4f}") for b in bench)])
    return out


def as_json(rows: list[RunRow]) -> list[dict]:
    return [{k: v for k, v in asdict(r).items() if k != "series"} for r in rows]


def figure(rows: list[RunRow]):
    """The comparison figure: loss against step and against wall time, the eval metric against
    step (one line per run), bars for samples/s, tokens/s and peak memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 8), dpi=100)
    (loss_step, loss_time, metric_ax), (samples_ax, tokens_ax, mem_ax) = axes
    colors = [f"C{i % 10}" for i in range(len(rows))]
    for row, color in zip(rows, colors):
        s = row.series
        if s.get("step"):
            loss_step.plot(s["step"], s["loss"], color=color, label=row.label)
            loss_time.plot(s["wall_s"], s["loss"], color=color, label=row.label)
        if s.get("eval_step"):
            metric_ax.plot(s["eval_step"], s["eval"], "o-", color=color, label=f"{row.label}: {s['eval_name']}")
    names = sorted({r.series.get("eval_name") for r in rows if r.series.get("eval_name")})
    for ax, title, xlabel, ylabel in ((loss_step, "training loss", "step", "loss"),
                                      (loss_time, "training loss against wall time", "wall time (s)", "loss"),
                                      (metric_ax, "eval metric", "step", ", ".join(names) or "metric")):
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if ax.lines:
            ax.legend(fontsize=8)
    labels = [r.label for r in rows]
    mem_kind = "device" if any(r.peak_memory_kind == "device" for r in rows) else "host"
    for ax, values, title, unit in (
            (samples_ax, [r.samples_per_s or 0.0 for r in rows], "throughput: samples/s", "samples/s"),
            (tokens_ax, [r.tokens_per_s or 0.0 for r in rows], "throughput: tokens/s (real tokens)", "tokens/s"),
            (mem_ax, [r.peak_memory_mb or 0.0 for r in rows], f"peak {mem_kind} memory", "MiB")):
        ax.bar(range(len(rows)), values, color=colors)
        ax.set_xticks(range(len(rows)), labels, rotation=15, fontsize=8)
        ax.set_title(title)
        ax.set_ylabel(unit)
    fig.suptitle("hpcft compare: " + " vs ".join(labels))
    fig.tight_layout()
    return fig


def write_png(rows: list[RunRow], out: Path) -> Path:
    """The figure as a PNG, written atomically; the plotted numbers ride along in a PNG text
    chunk (``hpcft-compare``) so the file can be checked against the runs."""
    import matplotlib.pyplot as plt

    fig = figure(rows)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    data = json.dumps([{"label": r.label, "samples_per_s": r.samples_per_s, "tokens_per_s": r.tokens_per_s,
                        "peak_memory_mb": r.peak_memory_mb, **r.series} for r in rows])
    try:
        fig.savefig(tmp, format="png", metadata={"hpcft-compare": data})
        tmp.replace(out)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return out
