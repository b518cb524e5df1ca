"""Compatibility name for jobs queued before hpcft 0.2: their submitit pickles reference
``hpcft.launch.Worker``. A job still waiting in the queue when hpcft is upgraded in its
environment unpickles this alias and runs with the current worker (its launch.json's fields
that changed are read with defaults by :meth:`hpcft.core.rundir.LaunchSpec.read`)."""

from .entry import WorkerCall as Worker

__all__ = ["Worker"]
