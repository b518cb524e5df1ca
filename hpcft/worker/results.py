"""What a finished run leaves in its folder: ``metrics.json`` and ``curves.png``.

progress.jsonl is read with :func:`hpcft.core.progress_log.read_progress` (shared with the login
side); it is imported here, so ``from .results import read_progress`` keeps working."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Optional

from hpcft.core.atomic import atomic_write_json
from hpcft.core.progress_log import read_progress


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("hpcft", "torch", "transformers", "datasets", "evaluate", "accelerate", "deepspeed", "torch_npu"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def eval_history(records: list[dict]) -> list[dict]:
    """One entry per evaluated step (the latest wins if a resumed run evaluated a step again)."""
    by_step: dict[int, dict] = {}
    for r in records:
        if r.get("event") == "eval":
            by_step[r["step"]] = {"step": r["step"], "epoch": r.get("epoch"), **r.get("metrics", {})}
    return [by_step[k] for k in sorted(by_step)]


def write_metrics(path: Path, *, headline: str, eval_metrics: dict, train_metrics: dict, history: list[dict],
                  device: dict, extra: dict) -> dict:
    data = {"headline": headline, "eval": eval_metrics, "train": train_metrics, "eval_history": history,
            "device": device.get("kind"), "device_name": device.get("name"), "precision": device.get("precision"),
            "threads": device.get("threads"), "versions": versions(), **extra}
    atomic_write_json(path, data)
    return data


def plot_curves(progress_path: Path, out: Path, headline: Optional[str] = None) -> Optional[Path]:
    """Training loss and eval metric against step, one PNG (matplotlib, Agg)."""
    records = read_progress(progress_path)
    train = [(r["step"], r["loss"]) for r in records
             if r.get("event") == "train" and isinstance(r.get("loss"), (int, float))]
    history = eval_history(records)
    if not train and not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        # a resumed run logs some steps twice at most; keep the last value per step
        steps = dict(train)
        xs = sorted(steps)
        ax.plot(xs, [steps[x] for x in xs], color="tab:blue", label="train loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss", color="tab:blue")
    if history:
        loss_pts = [(h["step"], h["loss"]) for h in history if isinstance(h.get("loss"), (int, float))]
        if loss_pts:
            ax.plot(*zip(*loss_pts), "o--", color="tab:cyan", label="eval loss")
        name = headline if headline and any(headline in h for h in history) else None
        if name:
            ax2 = ax.twinx()
            pts = [(h["step"], h[name]) for h in history if isinstance(h.get(name), (int, float))]
            ax2.plot(*zip(*pts), "s-", color="tab:orange", label=f"eval {name}")
            ax2.set_ylabel(f"eval {name}", color="tab:orange")
            ax2.legend(loc="upper right")
    restarts = [r["step"] for r in records if r.get("event") == "resume"]
    for s in restarts:
        ax.axvline(s, color="grey", linestyle=":", linewidth=1)
    ax.legend(loc="upper left")
    ax.set_title("hpcft: training loss and eval metric" + (f" ({len(restarts)} resume)" if restarts else ""))
    fig.tight_layout()
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out)
    return out
