"""What submit hands to submitit: a small picklable callable that names the worker's entry
point instead of importing it, as a console-script entry point does. The login side pickles
it; on the compute node it loads :mod:`hpcft.worker.main` by name and runs the job there. So
the login side never imports the worker, and the worker never imports the login side.
"""

from __future__ import annotations

import importlib
from typing import Any

from submitit.helpers import Checkpointable

WORKER_MAIN = "hpcft.worker.main"


def _worker():
    return importlib.import_module(WORKER_MAIN)


class WorkerCall(Checkpointable):
    """Runs one hpcft job (its run folder holds everything else: the launch spec)."""

    def __init__(self, run_dir: str):
        self.run_dir = str(run_dir)

    def __call__(self) -> Any:
        return _worker().run(self.run_dir)

    def checkpoint(self, *args: Any, **kwargs: Any):  # submitit calls it on USR2 (time limit)
        _worker().on_timeout(self.run_dir)
        return super().checkpoint(*args, **kwargs)
