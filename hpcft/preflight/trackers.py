"""Pre-flight for ``train.report_to``: the trackers a job asks for must be importable in the
environment the job runs in (checked here, before submit, and again by the worker)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Optional

from ..core.job import Job
from .checks import Check, _conda_prefix, _site_packages_of

PACKAGES = {"tensorboard": "tensorboard", "swanlab": "swanlab"}


def _has(prefix: Optional[Path], package: str) -> bool:
    if prefix is None:
        return importlib.util.find_spec(package) is not None
    return any((sp / package).is_dir() or (sp / f"{package}.py").is_file() for sp in _site_packages_of(prefix))


def tracker_check(job: Job, base_dir: Path) -> Optional[Check]:
    """None when the job asks for no tracker; else ✓, or ✗ with the pip command that fixes it."""
    if job.train is None or not job.train.report_to:
        return None
    env = job.env
    prefix: Optional[Path] = None
    if env.venv or env.conda:
        prefix = Path(env.venv).expanduser() if env.venv else _conda_prefix(env.conda)
        if prefix is not None and not prefix.is_absolute():
            prefix = base_dir / prefix
        label = f"venv {env.venv}" if env.venv else f"conda env {env.conda}"
        if prefix is None or not prefix.is_dir():
            return Check("trackers", True, f"{label} is not visible from here; checked again on the node")
        pip = f"{prefix}/bin/python -m pip install"
    else:
        label = f"this Python ({sys.executable})"
        pip = f"{sys.executable} -m pip install"
    missing = [PACKAGES[t] for t in job.train.report_to if not _has(prefix, PACKAGES[t])]
    if missing:
        return Check("trackers", False, f"train.report_to needs {', '.join(missing)} but {label} has "
                                        f"{'none of them' if len(missing) > 1 else 'no ' + missing[0]}; "
                                        f"install: {pip} {' '.join(missing)}")
    return Check("trackers", True, f"{', '.join(job.train.report_to)} in {label}")
