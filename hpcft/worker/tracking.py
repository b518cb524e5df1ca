"""Offline experiment tracking for the built-in tasks: ``train.report_to: [tensorboard, swanlab]``.

Both write only inside the run folder and never reach the network from the compute node:

- TensorBoard event files go to ``<run>/tensorboard/``; one ``tensorboard --logdir RUNS``
  over the runs folder then shows every run side by side, each under its run id.
- SwanLab runs in its offline mode (``SWANLAB_MODE=offline``, unless the job set ``local``) with
  its log in ``<run>/swanlog/``; ``hpcft show`` prints the ``swanlab sync`` / ``swanlab watch``
  command for the login node.

The packages are checked before submit (``hpcft.preflight.trackers``) and again here, first thing, so a
job in an environment without them stops in a second with the pip command, not after setup.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

from hpcft.core.rundir import RunPaths
from hpcft.worker.console import log
from hpcft.worker.errors import TrackerMissing

PACKAGES = {"tensorboard": "tensorboard", "swanlab": "swanlab"}


def require(report_to: list[str]) -> None:
    missing = [name for name in report_to if importlib.util.find_spec(PACKAGES[name]) is None]
    if missing:
        pkgs = " ".join(PACKAGES[m] for m in missing)
        raise TrackerMissing(f"train.report_to asks for {', '.join(missing)} but {sys.executable} cannot import "
                             f"{pkgs}; install it in the job's environment: {sys.executable} -m pip install {pkgs}")


def training_args(paths: RunPaths, report_to: list[str], is_main: bool = True) -> dict[str, Any]:
    """TrainingArguments entries (``report_to``, ``run_name``) and the environment the trackers
    read, set before the Trainer is built."""
    if not report_to:
        return {"report_to": "none"}
    require(report_to)
    if "tensorboard" in report_to:
        paths.tensorboard.mkdir(parents=True, exist_ok=True)
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(paths.tensorboard)
        log(f"tensorboard: event files in {paths.tensorboard}")
    if "swanlab" in report_to:
        if os.environ.get("SWANLAB_MODE") not in ("offline", "local"):
            os.environ["SWANLAB_MODE"] = "offline"  # never online from a compute node
        os.environ["SWANLAB_LOG_DIR"] = str(paths.swanlog)
        paths.swanlog.mkdir(parents=True, exist_ok=True)
        log(f"swanlab: {os.environ['SWANLAB_MODE']} mode, log in {paths.swanlog}")
        if is_main:
            _start_swanlab(paths)
    return {"report_to": list(report_to), "run_name": paths.run_id}


def _start_swanlab(paths: RunPaths) -> None:
    """Start the run here: transformers' SwanLabCallback asks ``swanlab.get_run()`` for an active
    run, which swanlab >= 0.10 answers with an error instead of None when there is none."""
    import swanlab

    swanlab.init(mode=os.environ["SWANLAB_MODE"], log_dir=str(paths.swanlog),
                 project="hpcft", name=paths.run_id)
