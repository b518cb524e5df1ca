"""Pre-flight for ``train.report_to``: the trackers a job asks for must be importable in the
environment the job runs in (checked here, before submit, and again by the worker)."""

from __future__ import annotations

from typing import Iterator

from .checks import Check, Preflight, job_env

PACKAGES = {"tensorboard": "tensorboard", "swanlab": "swanlab"}


def trackers(p: Preflight) -> Iterator[Check]:
    """Nothing when the job asks for no tracker; else ✓, or ✗ with the pip command that fixes it."""
    train = p.job.train
    if train is None or not train.report_to:
        return
    env = job_env(p.job, p.base_dir)
    if not env.visible:
        yield Check("trackers", True, f"{env.label} is not visible from here; checked again on the node")
        return
    missing = [PACKAGES[t] for t in train.report_to if not env.has(PACKAGES[t])]
    if missing:
        yield Check("trackers", False, f"train.report_to needs {', '.join(missing)} but {env.label} has "
                                       f"{'none of them' if len(missing) > 1 else 'no ' + missing[0]}; "
                                       f"install: {env.python()} -m pip install {' '.join(missing)}")
    else:
        yield Check("trackers", True, f"{', '.join(train.report_to)} in {env.label}")
